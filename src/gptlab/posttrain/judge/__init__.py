"""LLM-as-a-judge (the book's chapter 7): prompts.py (the prompts, reading the replies), client.py (the judge
endpoint over HTTP), run.py (answers from `posttrain.generate`, then `judge_run` / `judge_compare`)."""

from gptlab.posttrain.judge.client import JudgeClient, chat_url
from gptlab.posttrain.judge.prompts import (
    compare_order,
    compare_prompt,
    parse_compare,
    parse_score,
    score_prompt,
)
from gptlab.posttrain.judge.run import (
    JUDGE_FILE,
    generate_answers,
    judge_compare,
    judge_run,
)

__all__ = [
    "judge_run",
    "judge_compare",
    "parse_score",
    "parse_compare",
    "compare_order",
    "score_prompt",
    "compare_prompt",
    "chat_url",
    "JudgeClient",
    "generate_answers",
    "JUDGE_FILE",
]
