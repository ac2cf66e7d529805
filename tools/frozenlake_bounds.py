"""The best any agent can do on the held-out FrozenLake lakes, by how it moves: seeing the lake after every move
(the notebook's `optimal` reference, `max_turns * actions_per_turn` moves), one move a turn for `max_turns` turns,
and 1 to `actions_per_turn` moves committed each turn (the agent's own setting: a turn's later moves are made
without seeing where slippery ice took the player). Expected success (value iteration over the environment's own
transitions), and the `optimal` reference as the notebook plays it on each lake's seed. On ice that does not slip,
also what a policy that never reads a hole can reach: for each start, the shortest route (Down and Right moves in
some order) that most often avoids the holes on other lakes of the level (`--route-lakes`, 20,000), played on the
held-out lakes.
Prints one JSON object.

    .venv/bin/python tools/frozenlake_bounds.py
    .venv/bin/python tools/frozenlake_bounds.py --set max_turns=20
"""
import collections
import itertools
import json
import random
import sys

from base_model_modes import config_override
from stage0_tools import ROOT, base_model_arguments, load_notebook_module

sys.path.insert(0, str(ROOT))
from tinyzero.frozenlake import (ACTIONS, LEVELS, generate_lake, goal_of, neighbour, optimal_success,  # noqa: E402
                                 play_optimal, turn_plan_success)

DOWN_RIGHT = (ACTIONS["down"], ACTIONS["right"])


def routes(start: tuple[int, int], goal: tuple[int, int]) -> list[tuple[int, ...]]:
    """Every shortest route from `start` to a goal below and to the right of it: its Down and Right moves in each
    order."""
    downs, rights = goal[0] - start[0], goal[1] - start[1]
    return [tuple(DOWN_RIGHT[0] if i in chosen else DOWN_RIGHT[1] for i in range(downs + rights))
            for chosen in itertools.combinations(range(downs + rights), downs)]


def avoids_holes(rows: tuple[str, ...], start: tuple[int, int], route: tuple[int, ...]) -> bool:
    """Whether `route`, walked from `start` on ice that does not slip, steps on no hole."""
    here = start
    for action in route:
        here = neighbour(rows, here, action)
        if rows[here[0]][here[1]] == "H":
            return False
    return True


def hole_blind_routes(level: str, lakes: int = 20_000, seed: str = "hole-blind") -> dict:
    """For each start, the shortest route that avoids the holes most often on `lakes` lakes of `level` drawn apart
    from the held-out ones: the best a policy can do that sees where it stands and never reads a hole."""
    rng, clear = random.Random(seed), collections.defaultdict(collections.Counter)
    for _ in range(lakes):
        lake = generate_lake(rng, level)
        for route in routes(lake.start, goal_of(lake.rows)):
            clear[lake.start][route] += avoids_holes(lake.rows, lake.start, route)
    return {start: max(counts, key=counts.get) for start, counts in clear.items()}


def bounds(problems: list, max_turns: int, actions_per_turn: int) -> dict:
    """Mean success over `problems` of the best agent under each way of moving (see the module's text)."""
    mean = lambda values: round(sum(values) / len(problems), 4)
    moves = max_turns * actions_per_turn
    return {"lakes": len(problems),
            "every_move_seen": mean(optimal_success(p.lake, moves) for p in problems),
            "every_move_seen_played": mean(play_optimal(p.lake, moves).reward for p in problems),
            "one_move_a_turn": mean(optimal_success(p.lake, max_turns) for p in problems),
            f"up_to_{actions_per_turn}_moves_a_turn": mean(turn_plan_success(p.lake, max_turns, actions_per_turn)
                                                          for p in problems)}


def hole_blind_success(problems: list, chosen: dict) -> float:
    """The share of `problems` on which the route `chosen` for its start reaches the goal."""
    return round(sum(p.lake.start in chosen and avoids_holes(p.lake.rows, p.lake.start, chosen[p.lake.start])
                     for p in problems) / len(problems), 4)


def main() -> None:
    parser = base_model_arguments(__doc__.splitlines()[0])
    parser.add_argument("--set", type=config_override, action="append", default=[], metavar="FIELD=VALUE",
                        help="a Config field for the run whose lakes are measured (repeatable)")
    parser.add_argument("--route-lakes", type=int, default=20_000, help="lakes a level to choose the hole-blind routes on")
    args = parser.parse_args()
    nb = load_notebook_module()
    config = nb.make_config(args.preset, seed=args.seed, tasks=["frozenlake"], **dict(args.set))
    by_level = nb.build_datasets(config)["frozenlake"]["by_level"]
    report = {"max_turns": config.max_turns, "actions_per_turn": config.actions_per_turn,
              "levels": {level: bounds(problems, config.max_turns, config.actions_per_turn)
                         for level, problems in by_level.items()}}
    for level, problems in by_level.items():
        if not LEVELS[level][1]:  # ice that does not slip: a route is a plan
            chosen = hole_blind_routes(level, args.route_lakes)
            report["levels"][level]["hole_blind_route"] = hole_blind_success(problems, chosen)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
