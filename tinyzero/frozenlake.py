"""FrozenLake for a language-model agent: gymnasium's `FrozenLakeEnv` with a text face.

A problem (`Lake`) is a map from gymnasium's `generate_random_map`, a start on it and a seed for the
environment's randomness, all drawn from one `random.Random`. `Episode` plays one: each turn takes the
actions read from a response (`parse_actions`), steps gymnasium's environment with them and shows the
agent the new state as text (`render`): `P` the player, `_` frozen ice, `O` a hole, `G` the goal, and
`X` / `√` the player in a hole / on the goal. An unreadable answer moves nothing and still uses the turn.

Two references say how good a policy is on the same lakes: the optimal policy (finite-horizon value
iteration over the environment's own transition table, `best_actions_and_values`: the best any policy can
do within a number of moves; on ice that is not slippery, the shortest path) and a uniformly random one,
both played on the problem's own seed (`play_optimal`, `play_random`).
"""
import itertools
import random
import re
from collections import deque
from dataclasses import dataclass

try:
    from gymnasium.envs.toy_text.frozen_lake import FrozenLakeEnv, generate_random_map
except ImportError as error:  # pragma: no cover - depends on the installation
    raise ImportError("FrozenLake needs gymnasium: .venv/bin/pip install -r requirements.txt "
                      "(it pins gymnasium==1.4.0)") from error

ACTION_NAMES = ("Left", "Down", "Right", "Up")  # gymnasium's action numbers 0..3
ACTIONS = {name.lower(): number for number, name in enumerate(ACTION_NAMES)}
LEVELS = {"4x4": (4, False), "4x4-slippery": (4, True), "6x6": (6, False)}  # name: (side, slippery)
FROZEN_PROBABILITY = 0.8  # generate_random_map's p: the chance that a tile is ice rather than a hole
MAX_ANSWER_CHARS = 200  # a longer answer is not a list of a few moves; it is invalid without being read
TILES = {"S": "_", "F": "_", "H": "O", "G": "G"}
PLAYER = {"S": "P", "F": "P", "H": "X", "G": "√"}
WORD = re.compile(r"[A-Za-z]+|[^A-Za-z\s,;|]")


@dataclass(frozen=True)
class Lake:
    """One FrozenLake problem: the map's rows (`S` start, `F` ice, `H` hole, `G` goal), whether the ice is
    slippery, and the seed of the environment's randomness (which way a slippery step goes)."""
    level: str
    rows: tuple[str, ...]
    slippery: bool
    seed: int

    @property
    def start(self) -> tuple[int, int]:
        return next((r, c) for r, row in enumerate(self.rows) for c, tile in enumerate(row) if tile == "S")


def require_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"unknown FrozenLake level {level!r}; the levels are {sorted(LEVELS)}")


def state_of(rows: tuple[str, ...], position: tuple[int, int]) -> int:
    """gymnasium's state number of the tile at (row, column)."""
    return position[0] * len(rows[0]) + position[1]


def position_of(rows: tuple[str, ...], state) -> tuple[int, int]:
    """(row, column) of gymnasium's state number `state`."""
    return divmod(int(state), len(rows[0]))


MOVES = ((0, -1), (1, 0), (0, 1), (-1, 0))  # (row, column) step of each action, in gymnasium's order


def neighbour(rows: tuple[str, ...], position: tuple[int, int], action: int) -> tuple[int, int]:
    """Where `action` leads from `position` on ice that does not slip (the edge stops a move)."""
    r, c = position[0] + MOVES[action][0], position[1] + MOVES[action][1]
    return (r, c) if 0 <= r < len(rows) and 0 <= c < len(rows[0]) else position


def shortest_path(rows: tuple[str, ...], start: tuple[int, int]) -> list[int] | None:
    """The fewest actions from `start` to the goal over tiles that are not holes, on ice that does not slip
    (breadth-first, actions tried in gymnasium's order), or None when the goal cannot be reached."""
    previous, queue = {start: None}, deque([start])
    while queue:
        here = queue.popleft()
        if rows[here[0]][here[1]] == "G":
            path = []
            while previous[here] is not None:
                here, action = previous[here]
                path.append(action)
            return path[::-1]
        for action in range(len(MOVES)):
            there = neighbour(rows, here, action)
            if there not in previous and rows[there[0]][there[1]] != "H":
                previous[there] = (here, action)
                queue.append(there)
    return None


def goal_of(rows: tuple[str, ...]) -> tuple[int, int]:
    """(row, column) of the goal."""
    return next((r, c) for r, row in enumerate(rows) for c, tile in enumerate(row) if tile == "G")


def tiles_that_reach_the_goal(rows: tuple[str, ...]) -> list[tuple[int, int]]:
    """Every tile that is not a hole and has a path of non-hole tiles to the goal (moves are reversible)."""
    return sorted(steps_to_goal(rows))


TOWARD_GOAL_ORDER = (1, 2, 3, 0)  # Down, Right, Up, Left: the order a worked turn considers its moves in
EDGE = "edge"  # what a worked turn says lies beyond the lake's edge


def seen(rows: tuple[str, ...], position: tuple[int, int], action: int) -> str:
    """What lies where `action` leads from `position`, as the agent sees the lake: `_` ice, `O` a hole, `G` the goal,
    `edge` off the lake."""
    there = neighbour(rows, position, action)
    return EDGE if there == position else TILES[rows[there[0]][there[1]]]


def nearer_the_goal(rows: tuple[str, ...], position: tuple[int, int], action: int) -> bool:
    """Whether `action` brings the player nearer the goal as the crow flies (rows plus columns), holes or not."""
    goal = goal_of(rows)
    distance = lambda tile: abs(tile[0] - goal[0]) + abs(tile[1] - goal[1])
    return distance(neighbour(rows, position, action)) < distance(position)


def checks_turn(rows: tuple[str, ...], position: tuple[int, int], actions: list[int]) -> str:
    """Worked reasoning that checks moves toward the goal (stage 0's `checks` form): where the player and the goal
    are, then for each move made, the moves toward the goal that come before it (Down, Right, Up, Left), each with
    where it leads, what lies there and `no`, then the move made with where it leads and what lies there.
    Example: `at 2,0 goal 3,3 Down 3,0 O no Right 2,1 _`."""
    goal = goal_of(rows)
    where = lambda tile: f"{tile[0]},{tile[1]} {TILES[rows[tile[0]][tile[1]]]}"
    steps = [f"at {position[0]},{position[1]} goal {goal[0]},{goal[1]}"]
    for action in actions:
        for other in TOWARD_GOAL_ORDER:
            if other == action:
                break
            if nearer_the_goal(rows, position, other):
                steps.append(f"{ACTION_NAMES[other]} {where(neighbour(rows, position, other))} no")
        position = neighbour(rows, position, action)
        steps.append(f"{ACTION_NAMES[action]} {where(position)}")
    return " ".join(steps)


def steps_to_goal(rows: tuple[str, ...]) -> dict[tuple[int, int], int]:
    """The fewest moves from each tile that reaches the goal to the goal, over tiles that are not holes."""
    goal = goal_of(rows)
    steps, queue = {goal: 0}, deque([goal])
    while queue:
        here = queue.popleft()
        for action in range(len(MOVES)):
            there = neighbour(rows, here, action)
            if there not in steps and rows[there[0]][there[1]] != "H":
                steps[there] = steps[here] + 1
                queue.append(there)
    return steps


def best_move(rows: tuple[str, ...], position: tuple[int, int]) -> int | None:
    """The first move, in the order Down, Right, Up, Left, onto a tile one move nearer the goal on a path that
    avoids holes (on ice that does not slip); None on the goal or where the goal cannot be reached."""
    steps = steps_to_goal(rows)
    if position not in steps or steps[position] == 0:
        return None
    return next(action for action in TOWARD_GOAL_ORDER if steps.get(neighbour(rows, position, action)) == steps[position] - 1)


def neighbours_turn(rows: tuple[str, ...], position: tuple[int, int], action: int) -> str:
    """Worked reasoning that reads every neighbour (stage 0's `neighbours` form): where the player and the goal are,
    then every move in the order Down, Right, Up, Left with what lies where it leads, then the move made.
    Example: `at 2,0 goal 3,3 Down O Right _ Up _ Left edge so Right`. Every tile is named whichever move is made,
    so what a tile holds can only be read off the lake, never guessed from the move."""
    goal = goal_of(rows)
    looks = " ".join(f"{ACTION_NAMES[other]} {seen(rows, position, other)}" for other in TOWARD_GOAL_ORDER)
    return f"at {position[0]},{position[1]} goal {goal[0]},{goal[1]} {looks} so {ACTION_NAMES[action]}"


def generate_lake(rng: random.Random, level: str) -> Lake:
    """A random lake of `level`: gymnasium's random map (seeded from `rng`), a start drawn among the ice
    tiles that reach the goal, and a seed for the environment; all randomness comes from `rng`."""
    require_level(level)
    side, slippery = LEVELS[level]
    rows = [row.replace("S", "F") for row in generate_random_map(size=side, p=FROZEN_PROBABILITY,
                                                                  seed=rng.randrange(2 ** 31))]
    r, c = rng.choice([(r, c) for r, c in tiles_that_reach_the_goal(tuple(rows)) if rows[r][c] == "F"])
    rows[r] = rows[r][:c] + "S" + rows[r][c + 1:]
    return Lake(level, tuple(rows), slippery, rng.randrange(2 ** 31))


def render(rows: tuple[str, ...], position: tuple[int, int]) -> str:
    """The lake as the agent sees it: one line per row, the player drawn over its tile."""
    return "\n".join("".join(PLAYER[tile] if (r, c) == position else TILES[tile] for c, tile in enumerate(row))
                     for r, row in enumerate(rows))


def parse_actions(answer: str | None, max_actions: int) -> list[int] | None:
    """The moves in an answer such as `Right, Down` (names in any case, separated by spaces, commas, `;` or
    `|`), or None when it is not 1 to `max_actions` of them and nothing else. Never raises; linear time."""
    if not isinstance(answer, str) or len(answer) > MAX_ANSWER_CHARS:
        return None
    words = WORD.findall(answer)
    if not 1 <= len(words) <= max_actions or any(word.lower() not in ACTIONS for word in words):
        return None
    return [ACTIONS[word.lower()] for word in words]


class Episode:
    """One play of a lake, turn by turn, on gymnasium's environment seeded with the lake's seed."""

    def __init__(self, lake: Lake, max_turns: int):
        if max_turns < 1:
            raise ValueError(f"max_turns={max_turns} must be at least 1")
        self.lake, self.max_turns = lake, max_turns
        self.env = FrozenLakeEnv(desc=list(lake.rows), is_slippery=lake.slippery)
        self.state, _ = self.env.reset(seed=lake.seed)
        self.reward, self.turns, self.moves, self.invalid_turns = 0.0, 0, 0, 0
        self.terminated = False  # in a hole or on the goal

    @property
    def position(self) -> tuple[int, int]:
        return position_of(self.lake.rows, self.state)

    @property
    def done(self) -> bool:
        return self.terminated or self.turns >= self.max_turns

    @property
    def outcome(self) -> str:
        """"goal", "hole", "out of turns" or "playing"."""
        if self.terminated:
            return "goal" if self.reward > 0 else "hole"
        return "out of turns" if self.turns >= self.max_turns else "playing"

    def render(self) -> str:
        return render(self.lake.rows, self.position)

    def act(self, actions: list[int] | None) -> None:
        """One turn: the moves in order until one ends the episode; None (an unreadable answer) moves nothing."""
        if self.done:
            raise RuntimeError("the episode is over")
        self.turns += 1
        if actions is None:
            self.invalid_turns += 1
            return
        for action in actions:
            self.state, reward, self.terminated, _, _ = self.env.step(action)
            self.moves += 1
            if self.terminated:
                self.reward = float(reward)
                return


def best_actions_and_values(lake: Lake, moves: int) -> tuple[list[list[int]], list[float]]:
    """Finite-horizon value iteration over the environment's own transition table: for k = 1..`moves` moves
    left (index k - 1), the best action in every state (ties to the lowest action number), and the chance
    that the best policy reaches the goal from each state within `moves` moves."""
    env = FrozenLakeEnv(desc=list(lake.rows), is_slippery=lake.slippery)
    value, policy = [0.0] * env.observation_space.n, []
    for _ in range(moves):
        q = [[sum(p * (reward + (0.0 if ends else value[nxt])) for p, nxt, reward, ends in env.P[s][a])
              for a in range(len(ACTION_NAMES))] for s in range(len(value))]
        policy.append([max(range(len(row)), key=lambda a, row=row: (row[a], -a)) for row in q])
        value = [max(row) for row in q]
    return policy, value


def optimal_success(lake: Lake, moves: int) -> float:
    """The chance that the best policy reaches the goal from the start within `moves` moves."""
    return best_actions_and_values(lake, moves)[1][state_of(lake.rows, lake.start)]


def turn_plan_success(lake: Lake, turns: int, moves_per_turn: int) -> float:
    """The chance that the best agent reaches the goal from the start within `turns` turns when each turn commits
    to 1 to `moves_per_turn` moves before it sees the lake again (as a response's answer does; an unreadable answer
    moves nothing and uses the turn). With one move a turn this is `optimal_success(lake, turns)`; on ice that
    does not slip, `optimal_success(lake, turns * moves_per_turn)`; on slippery ice it lies between the two, since
    the moves after a turn's first are made without seeing where the ice took the player."""
    env = FrozenLakeEnv(desc=list(lake.rows), is_slippery=lake.slippery)
    plans = [plan for length in range(1, moves_per_turn + 1)
             for plan in itertools.product(range(len(ACTION_NAMES)), repeat=length)]
    value = [0.0] * env.observation_space.n

    def plan_value(state: int, plan: tuple, later: list[float]) -> float:
        reached, where = 0.0, {state: 1.0}  # chance of the goal so far; where the player may stand, and how likely
        for action in plan:
            after = {}
            for here, chance in where.items():
                for p, there, reward, ends in env.P[here][action]:
                    if ends:
                        reached += chance * p * reward
                    else:
                        after[there] = after.get(there, 0.0) + chance * p
            where = after
        return reached + sum(chance * later[here] for here, chance in where.items())

    for _ in range(turns):
        value = [max([value[s]] + [plan_value(s, plan, value) for plan in plans]) for s in range(len(value))]
    return value[state_of(lake.rows, lake.start)]


def play(lake: Lake, max_turns: int, choose) -> Episode:
    """An episode on the lake's own seed, each turn's moves from `choose(episode)`."""
    episode = Episode(lake, max_turns)
    while not episode.done:
        episode.act(choose(episode))
    return episode


def play_optimal(lake: Lake, moves: int) -> Episode:
    """The optimal policy, one move a turn for `moves` turns, on the lake's seed. Seeing the state after every
    move, it bounds from above any agent that commits to several moves a turn."""
    policy, _ = best_actions_and_values(lake, moves)
    return play(lake, moves, lambda episode: [policy[moves - episode.turns - 1][int(episode.state)]])


def play_random(lake: Lake, max_turns: int, actions_per_turn: int, rng: random.Random) -> Episode:
    """A uniformly random policy, `actions_per_turn` moves a turn, on the lake's seed."""
    return play(lake, max_turns, lambda episode: [rng.randrange(len(ACTION_NAMES)) for _ in range(actions_per_turn)])
