"""tinyzero/frozenlake.py against gymnasium itself: problems, transitions, the text face and the references."""
import random
import time

import gymnasium
import pytest

from tinyzero import frozenlake as fl


def lakes(level, count, seed=0):
    rng = random.Random(seed)
    return [fl.generate_lake(rng, level) for _ in range(count)]


@pytest.mark.parametrize("level", sorted(fl.LEVELS))
def test_lakes_are_reproducible_and_playable(level):
    side, slippery = fl.LEVELS[level]
    drawn = lakes(level, 50)
    assert drawn == lakes(level, 50)  # one seed, the same problems
    assert len(set(drawn)) > 40
    for lake in drawn:
        assert lake.level == level and lake.slippery == slippery
        assert len(lake.rows) == side and all(len(row) == side for row in lake.rows)
        assert "".join(lake.rows).count("S") == 1 and "".join(lake.rows).count("G") == 1
        assert lake.start in fl.tiles_that_reach_the_goal(lake.rows)


def test_an_unknown_level_is_named():
    with pytest.raises(ValueError, match="'8x8'.*4x4-slippery"):
        fl.generate_lake(random.Random(0), "8x8")


@pytest.mark.parametrize("level", sorted(fl.LEVELS))
def test_episodes_move_as_gymnasium_does_on_the_same_seed(level):
    rng = random.Random(1)
    for lake in lakes(level, 30, seed=2):
        reference = gymnasium.make("FrozenLake-v1", desc=list(lake.rows), is_slippery=lake.slippery)
        state, _ = reference.reset(seed=lake.seed)
        episode = fl.Episode(lake, max_turns=40)
        assert episode.state == state
        for _ in range(40):
            action = rng.randrange(4)
            state, reward, terminated, truncated, _ = reference.step(action)
            episode.act([action])
            assert (episode.state, episode.reward, episode.terminated) == (state, float(reward), terminated)
            if terminated or episode.done:
                break


def test_a_turn_stops_at_the_first_move_that_ends_the_episode():
    lake = fl.Lake("4x4", ("SHFF", "FFFF", "FFFF", "FFFG"), False, 0)
    episode = fl.Episode(lake, max_turns=5)
    episode.act([fl.ACTIONS["right"], fl.ACTIONS["down"], fl.ACTIONS["down"]])
    assert (episode.outcome, episode.moves, episode.position) == ("hole", 1, (0, 1))
    assert episode.render() == "_X__\n____\n____\n___G"
    with pytest.raises(RuntimeError, match="over"):
        episode.act([0])


def test_unreadable_answers_use_the_turn_and_move_nothing():
    lake = fl.Lake("4x4", ("SFFF", "FHFH", "FFFH", "HFFG"), False, 0)
    episode = fl.Episode(lake, max_turns=2)
    assert episode.render() == "P___\n_O_O\n___O\nO__G"
    episode.act(None)
    assert (episode.position, episode.turns, episode.invalid_turns, episode.outcome) == ((0, 0), 1, 1, "playing")
    episode.act([fl.ACTIONS["right"]])
    assert (episode.position, episode.outcome, episode.done) == ((0, 1), "out of turns", True)


def test_the_goal_is_drawn_with_the_player_on_it():
    lake = fl.Lake("4x4", ("FFFF", "FFFF", "FFFF", "FFSG"), False, 0)
    episode = fl.Episode(lake, max_turns=1)
    episode.act([fl.ACTIONS["right"]])
    assert (episode.outcome, episode.reward) == ("goal", 1.0)
    assert episode.render().splitlines()[-1] == "___√"


@pytest.mark.parametrize("answer, expected", [
    ("Right", [2]), ("left, DOWN", [0, 1]), ("Up || Up ; right", [3, 3, 2]), ("  down\n", [1]),
    ("", None), (None, None), (17, None), ("Right Down Left Up", None),  # more moves than the turn allows
    ("North", None), ("Right, 2", None), ("Right!", None), ("<answer>Right</answer>", None),
    ("Ri ght", None), ("Rightt", None), ("R" * 10_000, None), ("Right, " * 100_000, None), ("右", None),
])
def test_actions_are_read_strictly(answer, expected):
    assert fl.parse_actions(answer, max_actions=3) == expected


def test_reading_hostile_answers_never_raises_and_stays_fast():
    rng = random.Random(0)
    alphabet = "RightLeftUpDown, |;<>/answer\n\t\x00é"
    started = time.perf_counter()
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 300)))
        actions = fl.parse_actions(text, max_actions=3)
        assert actions is None or 1 <= len(actions) <= 3
    assert fl.parse_actions("a" * 10_000_000, 3) is None
    assert time.perf_counter() - started < 10  # linear work; a backtracking reader would take minutes


def test_a_checks_turn_names_each_tile_as_the_lake_shows_it():
    """Every tile a worked turn mentions is where the move leads and reads as the rendered lake shows it; a
    move it turns down (`no`) leads closer to the goal and comes before the move taken in Down, Right, Up, Left."""
    holes_seen = 0
    for lake in lakes("6x6", 40, seed=3):
        path = fl.shortest_path(lake.rows, lake.start)
        shown = fl.render(lake.rows, (-1, -1)).splitlines()  # the lake with no player drawn on it
        goal = fl.goal_of(lake.rows)
        assert lake.rows[goal[0]][goal[1]] == "G"
        words = fl.checks_turn(lake.rows, lake.start, path[:2]).split()
        assert words[:4] == ["at", f"{lake.start[0]},{lake.start[1]}", "goal", f"{goal[0]},{goal[1]}"]
        position, rest = lake.start, words[4:]
        for action in path[:2]:
            while rest[3:4] == ["no"]:
                name, (r, c), tile = rest[0], map(int, rest[1].split(",")), rest[2]
                other = fl.ACTION_NAMES.index(name)
                assert fl.TOWARD_GOAL_ORDER.index(other) < fl.TOWARD_GOAL_ORDER.index(action)
                assert fl.neighbour(lake.rows, position, other) == (r, c) and shown[r][c] == tile
                holes_seen += tile == "O"
                rest = rest[4:]
            position = fl.neighbour(lake.rows, position, action)
            assert rest[:3] == [fl.ACTION_NAMES[action], f"{position[0]},{position[1]}", shown[position[0]][position[1]]]
            rest = rest[3:]
        assert rest == []
    assert holes_seen > 5  # the checks do see holes


def test_a_neighbours_turn_reads_every_neighbour_as_the_lake_shows_it():
    """A worked turn names what lies beyond each move as the rendered lake shows it, whichever move it makes, and
    its move is the first (Down, Right, Up, Left) one move nearer the goal, which never enters a hole."""
    tiles_named = set()
    for lake in lakes("6x6", 40, seed=3):
        shown = fl.render(lake.rows, (-1, -1)).splitlines()  # the lake with no player drawn on it
        goal, steps = fl.goal_of(lake.rows), fl.steps_to_goal(lake.rows)
        assert lake.rows[goal[0]][goal[1]] == "G" and steps[goal] == 0
        assert steps[lake.start] == len(fl.shortest_path(lake.rows, lake.start))
        position = lake.start
        while position != goal:
            move = fl.best_move(lake.rows, position)
            words = fl.neighbours_turn(lake.rows, position, move).split()
            assert words[:4] == ["at", f"{position[0]},{position[1]}", "goal", f"{goal[0]},{goal[1]}"]
            assert words[-2:] == ["so", fl.ACTION_NAMES[move]]
            looks = words[4:-2]
            assert looks[0::2] == [fl.ACTION_NAMES[a] for a in fl.TOWARD_GOAL_ORDER]
            for action, tile in zip(fl.TOWARD_GOAL_ORDER, looks[1::2]):
                there = fl.neighbour(lake.rows, position, action)
                assert tile == (fl.EDGE if there == position else shown[there[0]][there[1]])
                tiles_named.add(tile)
            nearer = [a for a in fl.TOWARD_GOAL_ORDER if steps.get(fl.neighbour(lake.rows, position, a)) == steps[position] - 1]
            assert move == nearer[0]
            position = fl.neighbour(lake.rows, position, move)
            assert lake.rows[position[0]][position[1]] != "H"
    assert tiles_named == {"_", "O", "G", fl.EDGE}
    assert fl.best_move(lake.rows, goal) is None


def test_the_optimal_policy_on_solid_ice_is_the_shortest_path():
    lake = fl.Lake("4x4", ("SFFF", "FHFH", "FFFH", "HFFG"), False, 0)  # 6 moves: down, down, right, right, down, right
    assert fl.optimal_success(lake, 5) == 0.0
    assert fl.optimal_success(lake, 6) == 1.0
    episode = fl.play_optimal(lake, 6)
    assert (episode.outcome, episode.moves) == ("goal", 6)


def test_the_optimal_success_on_slippery_ice_is_what_playing_it_achieves():
    lake = lakes("4x4-slippery", 1, seed=3)[0]
    expected = fl.optimal_success(lake, 30)
    assert 0.0 < expected < 1.0
    assert fl.optimal_success(lake, 10) <= fl.optimal_success(lake, 30) <= fl.optimal_success(lake, 100)
    rng = random.Random(0)
    plays = 2000
    wins = sum(fl.play_optimal(fl.Lake(lake.level, lake.rows, True, rng.randrange(2 ** 31)), 30).reward
               for _ in range(plays))
    sigma = (expected * (1 - expected) / plays) ** 0.5
    assert abs(wins / plays - expected) < 4 * sigma


def test_moves_committed_a_turn_ahead_bound_the_agent_between_one_and_all_moves_seen():
    solid = fl.Lake("4x4", ("SFFF", "FHFH", "FFFH", "HFFG"), False, 0)  # 6 moves on solid ice
    assert fl.turn_plan_success(solid, 3, 2) == 1.0 and fl.turn_plan_success(solid, 2, 2) == 0.0
    assert fl.turn_plan_success(solid, 5, 1) == 0.0 and fl.turn_plan_success(solid, 6, 1) == 1.0
    for lake in lakes("4x4-slippery", 8, seed=5):
        for turns in (3, 6):
            one, two = fl.turn_plan_success(lake, turns, 1), fl.turn_plan_success(lake, turns, 2)
            assert one == pytest.approx(fl.optimal_success(lake, turns))
            assert one <= two <= fl.optimal_success(lake, 2 * turns) + 1e-12
    lake = lakes("4x4-slippery", 1, seed=3)[0]  # two blind moves: strictly between the two bounds here
    assert fl.optimal_success(lake, 6) < fl.turn_plan_success(lake, 6, 2) < fl.optimal_success(lake, 12)


def test_a_random_policy_is_far_below_the_optimal_one():
    drawn = lakes("6x6", 100)
    rng = random.Random(0)
    random_wins = sum(fl.play_random(lake, 10, 2, rng).reward for lake in drawn)
    optimal_wins = sum(fl.play_optimal(lake, 35).reward for lake in drawn)
    assert optimal_wins == 100  # every start reaches the goal; no shortest path on 36 tiles is longer
    assert random_wins < 40


def test_slippery_success_within_a_move_budget_matches_the_known_figures():
    # From gymnasium's own corner start, the optimal policy on random 4x4 slippery maps reaches the goal within
    # 10 moves about 10% of the time, within 30 about 63% and within 100 about 89%.
    def from_the_corner(lake):
        rows = [row.replace("S", "F") for row in lake.rows]
        return fl.Lake(lake.level, ("S" + rows[0][1:], *rows[1:]), True, lake.seed)
    corner = [from_the_corner(lake) for lake in lakes("4x4-slippery", 200)]
    for moves, expected in ((10, 0.10), (30, 0.63), (100, 0.89)):
        mean = sum(fl.optimal_success(lake, moves) for lake in corner) / len(corner)
        assert abs(mean - expected) < 0.04, (moves, mean)
