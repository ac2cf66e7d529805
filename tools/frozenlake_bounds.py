"""The best any agent can do on the held-out FrozenLake lakes, by how it moves: seeing the lake after every move
(the notebook's `optimal` reference, `max_turns * actions_per_turn` moves), one move a turn for `max_turns` turns,
and 1 to `actions_per_turn` moves committed each turn (the agent's own setting: a turn's later moves are made
without seeing where slippery ice took the player). Expected success (value iteration over the environment's own
transitions), and the `optimal` reference as the notebook plays it on each lake's seed. Prints one JSON object.

    .venv/bin/python tools/frozenlake_bounds.py
    .venv/bin/python tools/frozenlake_bounds.py --set max_turns=20
"""
import json
import sys

from base_model_modes import config_override
from stage0_tools import ROOT, base_model_arguments, load_notebook_module

sys.path.insert(0, str(ROOT))
from tinyzero.frozenlake import optimal_success, play_optimal, turn_plan_success  # noqa: E402


def bounds(problems: list, max_turns: int, actions_per_turn: int) -> dict:
    """Mean success over `problems` of the best agent under each way of moving (see the module's text)."""
    mean = lambda values: round(sum(values) / len(problems), 4)
    moves = max_turns * actions_per_turn
    return {"lakes": len(problems),
            "every_move_seen": mean(optimal_success(p.lake, moves) for p in problems),
            "every_move_seen_played": mean(play_optimal(p.lake, moves).reward for p in problems),
            "one_move_a_turn": mean(turn_plan_success(p.lake, max_turns, 1) for p in problems),
            f"up_to_{actions_per_turn}_moves_a_turn": mean(turn_plan_success(p.lake, max_turns, actions_per_turn)
                                                          for p in problems)}


def main() -> None:
    parser = base_model_arguments(__doc__.splitlines()[0])
    parser.add_argument("--set", type=config_override, action="append", default=[], metavar="FIELD=VALUE",
                        help="a Config field for the run whose lakes are measured (repeatable)")
    args = parser.parse_args()
    nb = load_notebook_module()
    config = nb.make_config(args.preset, seed=args.seed, tasks=["frozenlake"], **dict(args.set))
    by_level = nb.build_datasets(config)["frozenlake"]["by_level"]
    report = {"max_turns": config.max_turns, "actions_per_turn": config.actions_per_turn,
              "levels": {level: bounds(problems, config.max_turns, config.actions_per_turn)
                         for level, problems in by_level.items()}}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
