"""The experiment report: which variants really differ from the baseline, in tables, plots and words.

`write_report(exp_dir)` reads `exp_dir/results.sqlite` and writes, atomically, `report.md` (rendered from the
one template, report.md.j2), a standalone `report.html` converted from that Markdown (plots embedded) and
`plots/{loss_curves,test_loss,delta}.png`. Every report has a "Yardsticks" part: the seed's baseline (3.692)
and best stack (3.578) and OpenAI's GPT-2 small (3.500) beside our numbers, and whether the runs' test set is
the seed's (see yardsticks.py).

analysis/compare.py: the rows' statistics; rows.py: the sentences; format.py: the numbers as strings; tables.py:
the tables as text; plots.py: the figures; render.py: the files (report.md.j2, ladder.md.j2, parts.md.j2).
"""

from gptlab.experiments.analysis.compare import build_rows
from gptlab.experiments.report.render import write_report
from gptlab.experiments.report.rows import verdict_sentence, yardstick_summary
from gptlab.experiments.report.tables import format_table

__all__ = ["build_rows", "format_table", "verdict_sentence", "write_report", "yardstick_summary"]
