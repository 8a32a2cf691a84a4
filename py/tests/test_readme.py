"""The README's Python examples run as written."""

import pathlib
import re

import pytest

README = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
EXAMPLES = dict(re.findall(r"<!-- python example: ([^>]+) -->\n```python\n(.*?)```", README, re.S))


def test_the_readme_has_its_examples():
    assert set(EXAMPLES) == {"router", "disaggregated handler"}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_a_readme_example_runs(name):
    exec(compile(EXAMPLES[name], f"README.md ({name})", "exec"), {"__name__": "readme"})
