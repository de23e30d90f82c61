"""The verifiable reward of math answers: does a model's response end in an answer equal to the ground truth?

    with AnswerChecker(timeout_s=2.0) as checker:
        checker.check(["... so \\boxed{12}", "The answer is 13."], ["12", "12"])   # -> [True, False]

    is_correct(response, gold)   # the same decision in-process, without a time limit (for trusted inputs)

How a response is judged:
1. Fast path, in-process, microseconds: the final answer is extracted (the last \\boxed{...}; else what follows
   the last "answer is" / "answer:"; else the last number) and normalised ($...$, \\( \\), \\frac / \\dfrac,
   thousands separators, \\text{...}, a trailing period, whitespace). When it and the ground truth are both plain
   rationals (12, -3, 0.5, 7/4) they are compared exactly.
2. Otherwise math-verify (sympy) decides, in a worker process with a time limit per check: an answer whose
   parsing or comparison runs past `timeout_s` (`9**9**9**9`, a huge expression) counts as wrong, the worker
   is killed and a fresh one takes the next check. Signal-based time limits would not do: a bignum power in
   C cannot be interrupted by a signal, and signals only work in a process's main thread.
Guards before any parsing: only the last `max_response_chars` characters of a response are read (answers come
last), and an extracted answer with a tower of exponents or an exponent/factorial of 6+ digits counts as wrong.

Pure Python plus math-verify; nothing here imports torch, envs or policies. The worker is this module run with
`python -m algorithms.math_reward`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:|=)\s*", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?")
_RATIONAL = re.compile(r"([-+]?)(\d+(?:\.\d+)?)(?:/(\d+(?:\.\d+)?))?")
_THOUSANDS = re.compile(r"(?<!\d)(\d{1,3}(?:,\d{3})+)(?![\d,])")
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([-+]?[\d.]+)\s*\}\s*\{\s*([-+]?[\d.]+)\s*\}")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{[^{}]*\}")
_DROP = re.compile(r"\$|\\\(|\\\)|\\\[|\\\]|\\left|\\right|\\displaystyle|\\[!,;: ]")
# a power whose exponent holds another power, or an exponent / factorial with 6+ digits
_EXPLOSIVE = re.compile(
    r"(?:\*\*|\^)\s*[{(]?[^{}()]{0,20}?(?:\*\*|\^)|(?:\*\*|\^)\s*[{(]?\s*[-+]?\d{6,}|(?<!\d)\d{6,}\s*!"
)
MAX_RATIONAL_CHARS = 1000  # longer numbers are not parsed (Python refuses int() of 4300+ digits anyway)


# ------------------------------------------------------------------------------------------------ extraction
def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}) in `text`, braces balanced; None when there is none
    or it is not closed."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    depth, start = 1, starts[-1]
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return None


def normalize_answer(answer: str) -> str:
    """Strip math delimiters, spacing commands, \\text{...}, thousands separators, whitespace and a final
    period; turn numeric \\frac{a}{b} into a/b."""
    s = _TEXT.sub("", answer)
    s = _DROP.sub("", s)
    s = _FRAC.sub(r"\1/\2", s)
    s = _THOUSANDS.sub(lambda m: m.group(1).replace(",", ""), s)
    s = re.sub(r"\s+", "", s)
    return s.rstrip(".")


def extract_answer(response: str) -> str | None:
    """The final answer of a response, normalised: the last \\boxed{...}; else what follows the last
    "answer is" (up to the end of its line; its first number when that is not itself one); else the last
    number in the response. None when there is none of these."""
    boxed = last_boxed(response)
    if boxed is not None:
        return normalize_answer(boxed) or None
    matches = list(_ANSWER_IS.finditer(response))
    if matches:
        rest = response[matches[-1].end() :].split("\n", 1)[0]
        cleaned = normalize_answer(rest)
        if cleaned and as_rational(cleaned) is not None:
            return cleaned
        first = _NUMBER.search(normalize_answer_keep_spaces(rest))
        if first:
            return normalize_answer(first.group(0))
        return cleaned or None
    text = normalize_answer_keep_spaces(response).rstrip().rstrip(".")
    last_word = re.split(r"[\s=]", text)[-1] if text else ""
    if re.search(r"\d", last_word) and re.search(r"[*^/!+(]", last_word):
        return normalize_answer(last_word)  # an expression such as 3+4 or 9**9**9, not a number inside one
    numbers = _NUMBER.findall(text)
    return normalize_answer(numbers[-1]) if numbers else None


def normalize_answer_keep_spaces(text: str) -> str:
    """`normalize_answer` without joining words: for searching numbers in running text."""
    s = _DROP.sub(" ", _TEXT.sub(" ", text))
    s = _FRAC.sub(r"\1/\2", s)
    return _THOUSANDS.sub(lambda m: m.group(1).replace(",", ""), s)


def as_rational(answer: str) -> Fraction | None:
    """`answer` (normalised) as an exact rational when it is a plain integer, decimal or a/b; else None."""
    if len(answer) > MAX_RATIONAL_CHARS:
        return None
    m = _RATIONAL.fullmatch(answer)
    if not m:
        return None
    sign, num, den = m.groups()
    value = Fraction(num)
    if den is not None:
        if Fraction(den) == 0:
            return None
        value /= Fraction(den)
    return -value if sign == "-" else value


def is_explosive(answer: str) -> bool:
    """True for answers whose evaluation could take unbounded time or memory (towers of powers, huge
    exponents or factorials)."""
    return bool(_EXPLOSIVE.search(answer))


# ------------------------------------------------------------------------------------------------ decisions
def fast_verdict(response: str, gold: str) -> bool | None:
    """The decision when it needs no symbolic maths: True/False, or None to ask math-verify.

    False without asking when the gold answer is a number and the response holds no number at all, or when the
    extracted answer is explosive."""
    predicted = extract_answer(response)
    gold_value = as_rational(normalize_answer(gold))
    if predicted is None:
        return False if gold_value is not None else None
    predicted_value = as_rational(predicted)
    if gold_value is not None and predicted_value is not None:
        return predicted_value == gold_value
    if gold_value is not None and _RATIONAL.fullmatch(predicted):
        return False  # a number too long to be the gold one
    if is_explosive(predicted):
        return False
    return None


def math_verify_equal(response: str, gold: str) -> bool:
    """math-verify's judgement, without a time limit (run it under `AnswerChecker` for untrusted responses)."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns on every call without its own timeout
    gold_parsed = parse(f"${gold}$", parsing_timeout=None) or parse(gold, parsing_timeout=None)
    predicted = parse(response, parsing_timeout=None)
    return bool(gold_parsed and predicted) and bool(verify(gold_parsed, predicted, timeout_seconds=None))


def is_correct(response: str, gold: str, max_response_chars: int = 4000) -> bool:
    """Whether `response` ends in an answer equal to `gold`, decided in-process with no time limit."""
    tail = response[-max_response_chars:]
    verdict = fast_verdict(tail, gold)
    return verdict if verdict is not None else math_verify_equal(tail, gold)


# ------------------------------------------------------------------------------------------------ watchdog
class AnswerChecker:
    """Checks responses against gold answers with a time limit per check (see the module docstring).

    The math-verify worker process starts on the first check the fast path cannot decide, is restarted after a
    timeout, dies with its parent, and is stopped by `close()`. `num_timeouts` counts the checks that timed out.
    """

    def __init__(
        self, timeout_s: float = 2.0, max_response_chars: int = 4000, start_timeout_s: float = 120.0
    ):
        if timeout_s <= 0 or max_response_chars < 1:
            raise ValueError(
                f"timeout_s={timeout_s} and max_response_chars={max_response_chars} must be positive"
            )
        self.timeout_s, self.max_response_chars, self.start_timeout_s = (
            timeout_s,
            max_response_chars,
            start_timeout_s,
        )
        self.num_timeouts = 0
        self._proc: subprocess.Popen | None = None
        self._buffer = b""

    def check(self, responses: Sequence[str], golds: Sequence[str]) -> list[bool]:
        """One verdict per (response, gold) pair."""
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers; they must pair up")
        out = []
        for response, gold in zip(responses, golds):
            tail = response[-self.max_response_chars :]
            verdict = fast_verdict(tail, gold)
            out.append(verdict if verdict is not None else self._verify_isolated(tail, gold))
        return out

    def _verify_isolated(self, response: str, gold: str) -> bool:
        proc = self._worker()
        proc.stdin.write(json.dumps({"response": response, "gold": gold}).encode() + b"\n")
        proc.stdin.flush()
        line = self._read_line(time.monotonic() + self.timeout_s)
        if line is None:
            self.num_timeouts += 1
            self._stop_worker()
            return False
        return bool(json.loads(line)["correct"])

    def _worker(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._stop_worker()
        root = str(Path(__file__).resolve().parents[1])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
        }
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "algorithms.math_reward"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        if self._read_line(time.monotonic() + self.start_timeout_s) != "ready":
            code = self._proc.poll()
            self._stop_worker()
            raise RuntimeError(
                f"the math-verify worker did not start (exit code {code}); check that `python -c 'import "
                "math_verify'` works in this environment (pip install -e .[llm])"
            )
        return self._proc

    def _read_line(self, deadline: float) -> str | None:
        """The worker's next line, or None when it does not come before `deadline` (or the worker died)."""
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def _stop_worker(self) -> None:
        proc, self._proc, self._buffer = self._proc, None, b""
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            stream.close()

    def close(self) -> None:
        """Stop the worker process. Safe to call twice."""
        self._stop_worker()

    def __enter__(self) -> AnswerChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_proc", None) is not None:
            self._stop_worker()


def _serve(memory_limit_bytes: int = 4 << 30) -> None:
    """The worker: die with the parent, cap memory, then answer one JSON line per JSON request line."""
    import ctypes
    import resource
    import signal

    try:  # Linux: SIGKILL when the parent dies, so a check stuck in C cannot outlive the run
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    math_verify_equal("1", "1")  # import and warm up before saying ready
    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        request = json.loads(line)
        try:
            correct = math_verify_equal(request["response"], request["gold"])
        except Exception:  # noqa: BLE001 - a response that breaks the parser is a wrong answer
            correct = False
        out.write(json.dumps({"correct": correct}).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    _serve()
