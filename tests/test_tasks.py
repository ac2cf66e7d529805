"""Tests for the TASKS section: problem generators, answer extraction, safe equation checks, rewards.

Run `pytest -s tests/test_tasks.py` to see the timing lines printed by the fuzz tests.
"""
import gc
import math
import random
import time
import unicodedata
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

COUNTDOWN_LEVEL_NAMES = ["3x9", "3x20", "4x20", "4x99"]
MULTIPLICATION_LEVEL_NAMES = ["1x1", "2x1", "2x2", "3x1", "3x2", "3x3"]
SLOWEST_ALLOWED_SECONDS = 0.05
PROBLEMS_PER_LEVEL = 300

# A fixed puzzle and product for the reward tests: 8/(3-8/3) = 24 needs an exact non-integer step.
PUZZLE_NUMBERS = [3, 3, 8, 8]
PUZZLE_TARGET = 24
FACTOR_A, FACTOR_B = 12, 34  # product 408


def wrap(answer: str) -> str:
    return f"<think>let me see</think> <answer>{answer}</answer>"


def timed(function, *args):
    """(result, seconds) of a call: this thread's CPU time (another test process on the machine, as README runs the
    suite on two workers, does not add to it), with the garbage collector paused, and the fastest of three calls
    when the first is over SLOWEST_ALLOWED_SECONDS: an input that is slow to score is slow every time, a pause of
    the process is not."""
    fastest = math.inf
    for _ in range(3):
        collecting = gc.isenabled()
        gc.disable()
        try:
            start = time.thread_time()
            result = function(*args)
            fastest = min(fastest, time.thread_time() - start)
        finally:
            if collecting:
                gc.enable()
        if fastest < SLOWEST_ALLOWED_SECONDS:
            break
    return result, fastest


# ---------------------------------------------------------------- levels and generators


def test_level_tables(nb):
    assert list(nb.COUNTDOWN_LEVELS) == COUNTDOWN_LEVEL_NAMES
    assert nb.COUNTDOWN_LEVELS["4x99"] == nb.CountdownLevel(4, 99, 100)
    assert list(nb.MULTIPLICATION_LEVELS) == MULTIPLICATION_LEVEL_NAMES
    assert nb.MULTIPLICATION_LEVELS["3x2"] == (3, 2)


@pytest.mark.parametrize("level", COUNTDOWN_LEVEL_NAMES)
def test_every_generated_countdown_puzzle_is_solvable(nb, level):
    spec = nb.COUNTDOWN_LEVELS[level]
    rng = random.Random(f"countdown-{level}")
    for _ in range(PROBLEMS_PER_LEVEL):
        problem = nb.generate_countdown_problem(rng, level)
        assert (problem.task, problem.level) == ("countdown", level)
        assert len(problem.numbers) == spec.count
        assert all(1 <= n <= spec.max_number for n in problem.numbers)
        assert 1 <= problem.target <= spec.max_target
        assert sorted(nb.equation_numbers(problem.solution)) == sorted(problem.numbers)
        assert nb.evaluate_equation(problem.solution) == problem.target
        assert nb.reward_for(problem, wrap(problem.solution)) == 1.0
        found = nb.solve_countdown(problem.numbers, problem.target)
        assert found is not None, problem
        assert nb.countdown_reward(wrap(found), list(problem.numbers), problem.target) == 1.0


def test_countdown_solution_parenthesises_subexpressions(nb):
    rng = random.Random(1)
    solutions = [nb.generate_countdown_problem(rng, "4x20").solution for _ in range(200)]
    # Every operator joins two operands that are literals or parenthesised groups.
    for s in solutions:
        depth_zero_operators = 0
        depth = 0
        for char in s:
            depth += (char == "(") - (char == ")")
            depth_zero_operators += depth == 0 and char in "+-*/"
        assert depth_zero_operators == 1, s


def test_countdown_numbers_keep_draw_order(nb):
    rng = random.Random(2)
    problems = [nb.generate_countdown_problem(rng, "4x99") for _ in range(100)]
    assert any(list(p.numbers) != sorted(p.numbers) for p in problems)


@pytest.mark.parametrize("generate_name, levels", [
    ("generate_countdown_problem", COUNTDOWN_LEVEL_NAMES),
    ("generate_multiplication_problem", MULTIPLICATION_LEVEL_NAMES),
])
def test_generation_is_deterministic(nb, generate_name, levels):
    generate = getattr(nb, generate_name)

    def batch(seed):
        rng = random.Random(seed)
        return [generate(rng, level) for level in levels for _ in range(50)]

    assert batch(123) == batch(123)
    assert batch(123) != batch(124)


def test_countdown_generation_is_fast(nb):
    rng = random.Random(3)
    start = time.thread_time()  # CPU time: another worker of the suite does not slow it
    for level in COUNTDOWN_LEVEL_NAMES:
        for _ in range(500):
            nb.generate_countdown_problem(rng, level)
    per_second = 2000 / (time.thread_time() - start)
    print(f"countdown generation: {per_second:,.0f} problems/s")
    assert per_second > 1000


@pytest.mark.parametrize("generate_name", ["generate_countdown_problem", "generate_multiplication_problem"])
def test_unknown_level_raises_with_allowed_names(nb, generate_name):
    with pytest.raises(ValueError, match="5x5") as error:
        getattr(nb, generate_name)(random.Random(0), "5x5")
    allowed = COUNTDOWN_LEVEL_NAMES if generate_name == "generate_countdown_problem" else MULTIPLICATION_LEVEL_NAMES
    assert all(name in str(error.value) for name in allowed)


@pytest.mark.parametrize("level", MULTIPLICATION_LEVEL_NAMES)
def test_multiplication_digit_counts(nb, level):
    digits_a, digits_b = nb.MULTIPLICATION_LEVELS[level]
    rng = random.Random(f"multiplication-{level}")
    for _ in range(PROBLEMS_PER_LEVEL):
        problem = nb.generate_multiplication_problem(rng, level)
        a, b = problem.numbers
        assert (problem.task, problem.level) == ("multiplication", level)
        assert (len(str(a)), len(str(b))) == (digits_a, digits_b)
        assert a >= 1 and b >= 1
        assert problem.target == a * b and problem.solution == str(a * b)
        assert nb.reward_for(problem, wrap(problem.solution)) == 1.0


def test_reward_for_rejects_unknown_task(nb):
    problem = nb.Problem("sorting", "x", (1, 2), 3, "3")
    with pytest.raises(ValueError, match="sorting"):
        nb.reward_for(problem, wrap("3"))


# ---------------------------------------------------------------- answer extraction


@pytest.mark.parametrize("completion, expected", [
    ("<answer>1+2</answer>", "1+2"),
    ("<answer>  \n 1 + 2 \n\t</answer>", "1 + 2"),
    ("<answer>1</answer> then <answer>2</answer>", "2"),
    ("<answer>1</answer> then <answer>2", "1"),  # an unclosed last tag does not count
    ("<answer>a<answer>b</answer>", "a<answer>b"),  # like the non-greedy regex <answer>(.*?)</answer>
    ("<answer></answer>", ""),
    ("no tags 1+2", None),
    ("<answer>1+2", None),
    ("1+2</answer>", None),
    ("</answer><answer>", None),
])
def test_extract_answer(nb, completion, expected):
    assert nb.extract_answer(completion) == expected


# ---------------------------------------------------------------- safe equations


@pytest.mark.parametrize("equation, value", [
    ("(3*5)+7", Fraction(22)),
    (" 1 + 2 ", Fraction(3)),
    ("8/(3-8/3)", Fraction(24)),
    ("7/2", Fraction(7, 2)),
    ("1-5", Fraction(-4)),
    ("2*3+4", Fraction(10)),
    ("1/0", None),
    ("8/(3-3)", None),
    ("-3+5", None),  # unary minus is not a countdown operation
    ("+3", None),
    ("2**3", None),
    ("7//2", None),
    ("7%2", None),
    ("1.5*2", None),
    ("x+1", None),
    ("abs(3)", None),
    ("1e3", None),
    ("0x10", None),
    ("1_000", None),
    ("007", None),
    ("(1+2", None),
    ("1+2)", None),
    (")(", None),
    ("", None),
    ("1 2", None),
    ("\u0663+\u0665", None),  # Arabic-Indic digits
    ("\uff13+\uff15", None),  # fullwidth digits
    ("1234567+1", None),  # literal longer than 6 digits
    ("(" * 21 + "1" + ")" * 21, None),
    ("(" * 20 + "1" + ")" * 20, Fraction(1)),
])
def test_evaluate_equation(nb, equation, value):
    assert nb.evaluate_equation(equation) == value


def test_equation_numbers(nb):
    assert nb.equation_numbers("(8-2)*(6+1)") == [8, 2, 6, 1]
    assert nb.equation_numbers("8/(3-8/3)") == [8, 3, 8, 3]
    assert nb.equation_numbers("1/0") == [1, 0]  # parses; evaluation is a separate question
    assert nb.equation_numbers("2**3") is None
    assert nb.equation_numbers("nope") is None


def test_solve_countdown(nb):
    assert nb.evaluate_equation(nb.solve_countdown([3, 3, 8, 8], 24)) == 24
    assert nb.evaluate_equation(nb.solve_countdown([5], 5)) == 5
    assert nb.solve_countdown([1, 1, 1], 100) is None


# ---------------------------------------------------------------- rewards


CORRECT, FORMAT, NOTHING = "correct", "format", "nothing"


@pytest.mark.parametrize("completion, outcome", [
    (wrap("8/(3-8/3)"), CORRECT),  # exact non-integer intermediate
    ("<answer> 8 / ( 3 - 8 / 3 ) </answer>", CORRECT),
    ("<answer>\n  8/(3-8/3)\n</answer>", CORRECT),
    ("<answer>3*8</answer> wait <answer>8/(3-8/3)</answer>", CORRECT),  # last answer counts
    ("<answer>8/(3-8/3)</answer> wait <answer>3*8</answer>", FORMAT),
    ("8/(3-8/3)", NOTHING),  # no answer tags
    ("8/(3-8/3) <answer>", NOTHING),  # unclosed tag
    ("<answer>8/(3-8/3)", NOTHING),
    ("the answer is 8/(3-8/3) <answer></answer>", FORMAT),  # an answer outside tags does not count
    (wrap("8*3*(3/3)"), FORMAT),  # 24, but uses 8, 3, 3, 3: 8 reused, one 8 missing
    (wrap("8*3"), FORMAT),  # numbers missing
    (wrap("8*3+8-8+3-3"), FORMAT),  # extra numbers
    (wrap("(8+8)/(3-3)"), FORMAT),  # division by zero
    (wrap("(8+8)+3+3"), FORMAT),  # right numbers, wrong value
    (wrap("8*3+0*(8/3)"), FORMAT),  # extra 0 literal
    (wrap("8*3 = 24"), FORMAT),
    (wrap("8**3"), FORMAT),
    (wrap("8//3"), FORMAT),
    (wrap("8%3"), FORMAT),
    (wrap("__import__('os').system('true')"), FORMAT),
    (wrap("8.0/(3-8/3)"), FORMAT),
    (wrap("\u0668/(\u0663-\u0668/\u0663)"), FORMAT),  # Arabic-Indic digits
    (wrap("\uff18/(\uff13-\uff18/\uff13)"), FORMAT),  # fullwidth digits
    (wrap("8/-(8/3-3)"), FORMAT),  # 24, but unary minus is rejected
])
@pytest.mark.parametrize("format_score", [0.1, 0.0])
def test_countdown_reward_cases(nb, completion, outcome, format_score):
    expected = {CORRECT: 1.0, FORMAT: format_score, NOTHING: 0.0}[outcome]
    assert nb.countdown_reward(completion, PUZZLE_NUMBERS, PUZZLE_TARGET, format_score=format_score) == expected


def test_countdown_reward_default_format_score(nb):
    assert nb.countdown_reward(wrap("8+8+3+3"), PUZZLE_NUMBERS, PUZZLE_TARGET) == 0.1
    assert nb.countdown_reward(wrap("(3*5)+7"), [7, 3, 5], 22) == 1.0


@pytest.mark.parametrize("answer, outcome", [
    ("408", CORRECT),
    ("  408 \n", CORRECT),
    ("0408", CORRECT),  # leading zeros still write the integer 408
    ("409", FORMAT),
    ("-408", FORMAT),
    ("+408", FORMAT),
    ("4,08", FORMAT),
    ("408.0", FORMAT),
    ("4 08", FORMAT),
    ("12*34", FORMAT),
    ("", FORMAT),
    ("-", FORMAT),
    ("\u0664\u0660\u0668", FORMAT),  # Arabic-Indic 408
    ("\uff14\uff10\uff18", FORMAT),  # fullwidth 408
    ("9" * 10_000, FORMAT),
])
def test_multiplication_reward_cases(nb, answer, outcome):
    for format_score in (0.1, 0.0):
        expected = {CORRECT: 1.0, FORMAT: format_score}[outcome]
        assert nb.multiplication_reward(wrap(answer), FACTOR_A, FACTOR_B, format_score=format_score) == expected
    assert nb.multiplication_reward(answer, FACTOR_A, FACTOR_B) == 0.0  # no tags, no reward


def test_multiplication_negative_product(nb):
    assert nb.multiplication_reward(wrap("-408"), -12, 34) == 1.0


# ---------------------------------------------------------------- adversarial inputs


ADVERSARIAL_ANSWERS = [
    "9**9**9**9",
    "9**9**9**9**9",
    "9" * 10_000,
    "9" * 10_000 + "*" + "9" * 10_000,
    "(" * 5000 + "1" + ")" * 5000,
    "(" * 5000,
    ")" * 5000,
    "-" * 5000 + "1",
    "1" + "+1" * 50_000,
    "[" * 5000 + "]" * 5000,
    "__import__('os').system('echo hacked')",
    "().__class__.__bases__[0].__subclasses__()",
    "lambda: 1",
    "open('/etc/passwd').read()",
    "\x00",
    "1\x00+2",
    "\u0663\u0663\u0663**\u0663\u0663\u0663",
    "\uff19**\uff19**\uff19",
    "\U0001d7d7*\U0001d7d7",  # mathematical bold digits
    "\ufffd" * 1000,
    "1e999999",
    "10**10**10",
    "2<<100000",
    "\n" * 10_000,
]
ADVERSARIAL_COMPLETIONS = [
    ("<answer>" * 100_000, 0.0),
    ("<answer>" * 100_000 + "</answer>", "format"),
    ("</answer>" * 100_000, 0.0),
    ("<answer></answer>" * 50_000, "format"),
    ("<answer>" + "x" * 1_000_000, 0.0),
    ("<" * 1_000_000, 0.0),
    ("<answer" * 100_000 + ">1</answer>", "format"),
]


def assert_fast_format_score(nb, completion, expected):
    for format_score in (0.1, 0.0):
        want = format_score if expected == "format" else expected
        for reward, seconds in (
            timed(nb.countdown_reward, completion, PUZZLE_NUMBERS, PUZZLE_TARGET, format_score),
            timed(nb.multiplication_reward, completion, FACTOR_A, FACTOR_B, format_score),
        ):
            assert reward == want
            assert seconds < SLOWEST_ALLOWED_SECONDS, seconds


@pytest.mark.parametrize("answer", ADVERSARIAL_ANSWERS, ids=lambda a: repr(a[:20]))
def test_adversarial_answers_get_format_score_quickly(nb, answer):
    assert_fast_format_score(nb, wrap(answer), "format")
    assert_fast_format_score(nb, answer, 0.0)
    assert nb.evaluate_equation(answer) is None


@pytest.mark.parametrize("completion, expected", ADVERSARIAL_COMPLETIONS, ids=lambda c: repr(c)[:20])
def test_adversarial_completions(nb, completion, expected):
    assert_fast_format_score(nb, completion, expected)


# ---------------------------------------------------------------- fuzzing


UNICODE_DIGITS = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Nd"]


def operator_chains():
    operators = st.sampled_from(["**", "*", "//", "/", "%", "+", "-", "<<", "^"])
    return st.one_of(
        st.sampled_from(["9**9**9**9", "9**9**9**9**9", "(9**9)**(9**9)"]),
        st.lists(st.tuples(st.integers(0, 99), operators), min_size=1, max_size=12).map(
            lambda pairs: "".join(f"{n}{op}" for n, op in pairs) + "9"),
    )


def huge_numbers():
    return st.one_of(st.integers(1, 10_000), st.just(10_000)).map(lambda n: "9" * n)


def deep_nesting():
    return st.tuples(st.integers(0, 5000), st.integers(0, 5000), st.sampled_from(["1", "1+2", "", "2**3"])).map(
        lambda t: "(" * t[0] + t[2] + ")" * t[1])


def unicode_digits():
    return st.text(st.sampled_from(UNICODE_DIGITS + list("0123456789+-*/() ")), max_size=30)


def junk():
    return st.one_of(
        st.text(st.characters(exclude_categories=["Cs"]), max_size=200),
        st.binary(max_size=300).map(lambda b: b.decode("utf-8", errors="replace")),
        st.text(st.sampled_from(list("0123456789+-*/() .x_e<>answer/")), max_size=200),
    )


def build_expression(leaves: list[int], operators: list[str], seed: int, spaced: bool):
    """(text, exact value or None on division by zero, literals) of a random tree over `leaves`.

    Every non-leaf operand is parenthesised, so the reference value needs no precedence rules.
    """
    shape = random.Random(seed)
    terms = [(str(n), Fraction(n), (n,)) for n in leaves]
    space = " " if spaced else ""
    for step in range(len(leaves) - 1):
        i = shape.randrange(len(terms) - 1)
        (left_text, left_value, left_numbers), (right_text, right_value, right_numbers) = terms[i], terms[i + 1]
        operator = operators[step % len(operators)]
        value = None
        if left_value is not None and right_value is not None:
            if operator == "+":
                value = left_value + right_value
            elif operator == "-":
                value = left_value - right_value
            elif operator == "*":
                value = left_value * right_value
            elif right_value != 0:
                value = left_value / right_value
        joined = f"({left_text}{space}{operator}{space}{right_text})"
        terms[i:i + 2] = [(joined, value, left_numbers + right_numbers)]
    return terms[0]


def arithmetic(max_leaves: int = 8):
    """Random well-formed expressions over small ints, with their exact values and literals."""
    return st.builds(
        build_expression,
        st.lists(st.integers(0, 30), min_size=1, max_size=max_leaves),
        st.lists(st.sampled_from("+-*/"), min_size=1, max_size=max_leaves),
        st.integers(0, 2**32),
        st.booleans(),
    )


WRAPPERS = [
    lambda s: s,
    lambda s: f"<answer>{s}</answer>",
    lambda s: f"<think>hmm</think>\n<answer>\n{s}\n</answer>",
    lambda s: f"<answer>{s}",
    lambda s: f"<answer>1</answer><answer>{s}</answer>",
    lambda s: f"<answer>{s}</answer><answer>",
]


PAYLOADS = st.one_of(operator_chains(), huge_numbers(), deep_nesting(), unicode_digits(), junk(),
                     arithmetic().map(lambda t: t[0]))
FUZZ_COMPLETIONS = st.tuples(PAYLOADS, st.sampled_from(WRAPPERS)).map(lambda pair: pair[1](pair[0]))
FUZZ_SETTINGS = dict(deadline=None, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


def test_fuzz_rewards_never_raise_and_stay_fast(nb):
    """Rewards of 4,000 hostile completions are in {0, format_score, 1}, without exceptions, each fast.

    `pytest -s` shows the slowest and the mean reward-call time.
    """
    seconds_per_call = []

    @settings(max_examples=4_000, **FUZZ_SETTINGS)
    @given(completion=FUZZ_COMPLETIONS, format_score=st.sampled_from([0.1, 0.0]))
    def check(completion, format_score):
        for reward_fn, args in (
            (nb.countdown_reward, (PUZZLE_NUMBERS, PUZZLE_TARGET, format_score)),
            (nb.multiplication_reward, (FACTOR_A, FACTOR_B, format_score)),
        ):
            reward, seconds = timed(reward_fn, completion, *args)
            seconds_per_call.append(seconds)
            assert reward in {0.0, format_score, 1.0}

    check()
    slowest, mean = max(seconds_per_call), sum(seconds_per_call) / len(seconds_per_call)
    print(f"\nfuzz: {len(seconds_per_call)} reward calls, slowest {slowest * 1e3:.3f} ms, mean {mean * 1e6:.1f} us")
    assert len(seconds_per_call) >= 8_000
    assert slowest < SLOWEST_ALLOWED_SECONDS


def test_fuzz_well_formed_arithmetic_is_exact(nb):
    """Random well-formed equations evaluate exactly, and use their own literals: reward 1.0 within limits."""
    @settings(max_examples=1500, **FUZZ_SETTINGS)
    @given(expression=arithmetic(max_leaves=12))
    def check(expression):
        text, value, numbers = expression
        depth, deepest = 0, 0
        for char in text:
            depth += (char == "(") - (char == ")")
            deepest = max(deepest, depth)
        if len(text) > nb.MAX_EQUATION_CHARS or deepest > nb.MAX_PAREN_DEPTH:
            assert nb.evaluate_equation(text) is None
            return
        assert nb.evaluate_equation(text) == value
        assert nb.equation_numbers(text) == list(numbers)
        if value is not None:
            assert nb.countdown_reward(wrap(text), list(reversed(numbers)), value) == 1.0
            assert nb.countdown_reward(wrap(text), list(numbers) + [1], value) == 0.1

    check()
