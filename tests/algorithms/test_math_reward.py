"""The verifiable math reward on a table of answer forms: right, wrong, malformed, huge and pathological."""

import time

import pytest

from algorithms.math_reward import AnswerChecker, as_rational, extract_answer, fast_verdict, is_correct

RIGHT = [
    ("12", "12"),
    ("\\boxed{12}", "12"),
    ("The answer is 12.", "12"),
    ("So the total is $12$.", "12"),
    ("We get \\(x = 12\\). The answer is \\boxed{12}", "12"),
    ("  12  \n", "12"),
    ("answer: -7", "-7"),
    ("$\\frac{1}{2}$", "0.5"),
    ("\\boxed{\\dfrac{3}{4}}", "3/4"),
    ("1/2", "\\frac{1}{2}"),
    ("0.50", "1/2"),
    ("12.0", "12"),
    ("1,234", "1234"),
    ("There are 42 apples.", "42"),
    ("\\boxed{12 \\text{ apples}}", "12"),
    ("7 + 5 = 12", "12"),
    ("\\boxed{\\sqrt{4}}", "2"),  # symbolic: math-verify
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
    ("x = 3+4", "7"),
]
WRONG = [
    ("13", "12"),
    ("\\boxed{13}", "12"),
    ("The answer is 12.", "13"),
    ("-12", "12"),
    ("\\boxed{\\frac{1}{3}}", "0.33"),
    ("12 then 13", "12"),  # the last number is the answer
    ("\\boxed{12} \\boxed{13}", "12"),  # the last box is the answer
    ("\\boxed{\\sqrt{3}}", "2"),
]
MALFORMED = ["", "   ", "no digits here", "\\boxed{", "\\boxed{}", "}}}{{{", "$$", "answer is", "\x00\x01"]
HUGE = ["1" * 100_000, "9" * 5000 + "!", "(" * 10_000, "\\boxed{" * 2000, "answer is " * 1000, "1 " * 50_000]
PATHOLOGICAL = ["9**9**9**9", "\\boxed{9^{9^{9^{9}}}}", "The answer is 10^{10^{10}}", "\\boxed{1234567!}"]


@pytest.mark.parametrize(("response", "gold"), RIGHT)
def test_right_answers(response, gold):
    assert is_correct(response, gold)


@pytest.mark.parametrize(("response", "gold"), WRONG)
def test_wrong_answers(response, gold):
    assert not is_correct(response, gold)


@pytest.mark.parametrize("response", MALFORMED + HUGE + PATHOLOGICAL)
def test_malformed_huge_and_pathological_answers_are_wrong_and_decided_in_process(response):
    start = time.perf_counter()
    assert fast_verdict(response[-4000:], "12") is False  # no symbolic maths needed to reject them
    assert time.perf_counter() - start < 0.2


def test_extraction_and_rationals():
    assert extract_answer("blah \\boxed{\\frac{1}{2}} blah") == "1/2"
    assert extract_answer("The answer is $1,000$.") == "1000"
    assert extract_answer("so 9**9**9") == "9**9**9"  # an expression, not the 9 at its end
    assert extract_answer("nothing") is None
    assert as_rational("-3/4") == as_rational("-0.75")
    assert as_rational("1/0") is None and as_rational("abc") is None


def test_checker_agrees_with_the_table_and_times_out_a_hanging_check():
    responses = [r for r, _ in RIGHT + WRONG]
    golds = [g for _, g in RIGHT + WRONG]
    with AnswerChecker(timeout_s=1.0) as checker:
        assert checker.check(responses, golds) == [True] * len(RIGHT) + [False] * len(WRONG)
        # (10^99999)! passes the guards and makes sympy compute forever: the watchdog stops it
        start = time.perf_counter()
        assert checker.check(["\\boxed{(10^{99999})!}"], ["5"]) == [False]
        elapsed = time.perf_counter() - start
        assert 1.0 <= elapsed < 3.0, elapsed
        assert checker.num_timeouts == 1
        # a fresh worker takes the next symbolic check
        assert checker.check(["\\boxed{\\sqrt{9}}", "\\boxed{\\sqrt{10}}"], ["3", "3"]) == [True, False]
        proc = checker._proc
    assert proc.poll() is not None  # close() stopped the worker


def test_checker_rejects_unpaired_inputs():
    with AnswerChecker() as checker, pytest.raises(ValueError, match="pair up"):
        checker.check(["1", "2"], ["1"])
