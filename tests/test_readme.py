"""The README's "Using it" snippet runs as written (issue 21)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_using_it_snippet_runs_as_written():
    text = README.read_text()
    section = text[text.index("## Using it"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md (Using it)", "exec"), {"__name__": "readme"})


def test_the_readme_names_the_make_variables():
    text = README.read_text()
    for var in ("DEMO_ARGS", "BENCH_ARGS", "SWEEP_ARGS"):
        assert var in text, var
    assert "`--json` on\neach" not in text  # localnet, node and tx have none
