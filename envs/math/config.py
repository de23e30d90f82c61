"""Configuration of the math env type (`env.name: math`): prompts with verifiable answers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from algorithms.schema import ConfigError, param
from envs.base import EnvConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_DATA = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class MathEnvConfig(EnvConfig):
    """One prompt per episode; the action is the policy's response as token ids; reward 1 when it is right."""

    name: str = param("math", help="registered env type")
    data_file: str = param(
        "envs/math/data/arithmetic_train.jsonl",
        help="JSONL or parquet file with prompt and answer fields (relative: to the working dir, then the repo)",
    )
    prompt_key: str = param("prompt", help="field of a record holding the prompt")
    answer_key: str = param("answer", help="field of a record holding the ground-truth answer")
    prompt_template: str = param(
        "{prompt}", help="text shown to the policy; {prompt} is replaced by the record's prompt"
    )
    tokenizer: str | None = param(
        None, help="folder of the policy's tokenizer (Hugging Face layout), to decode the response token ids"
    )
    max_response_tokens: int = param(16, help="response length L: actions are token ids [N, 1, L]", ge=1)
    reward_timeout_s: float = param(
        2.0, help="time limit of one answer check; a check that runs past it counts as wrong", gt=0
    )
    max_response_chars: int = param(
        4000, help="only the last this many characters of a response are checked", ge=1
    )

    def check(self) -> None:
        super().check()
        if self.tokenizer is None:
            raise ConfigError(
                "{section}tokenizer is required: the folder holding the policy's tokenizer files (usually the "
                "same folder as policy.pretrained), so the env can decode the response token ids"
            )
        if "{prompt}" not in self.prompt_template:
            shown = repr(self.prompt_template).replace("{", "{{").replace("}", "}}")
            raise ConfigError(
                "{section}prompt_template="
                + shown
                + " must contain {{prompt}} (where the record's prompt goes)"
            )

    def resolved_data_file(self) -> Path:
        """`data_file` as an existing path: as given, else relative to the repository root."""
        return resolve_path(self.data_file, "data_file")

    def resolved_tokenizer(self) -> Path:
        return resolve_path(self.tokenizer, "tokenizer")


def resolve_path(path: str, key: str) -> Path:
    """`path` when it exists, else the same path under the repository root; FileNotFoundError naming `key` if
    neither exists."""
    given = Path(path).expanduser()
    for candidate in (given, REPO_ROOT / given):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"env.{key}={path!r} does not exist (looked in {Path.cwd()} and {REPO_ROOT})")
