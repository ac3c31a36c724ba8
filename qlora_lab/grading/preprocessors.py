"""nbgrader preprocessors of the course: what the feedback HTML may show a student."""

from __future__ import annotations

import re

from nbgrader.preprocessors import NbGraderPreprocessor

HIDDEN_TESTS = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS.*?^[ \t]*### END HIDDEN TESTS[^\n]*\n?", re.M | re.S)


class HideHiddenTests(NbGraderPreprocessor):
    """Remove hidden-test regions from the feedback, and cut their tracebacks to one line.

    A second guard: the grader's feedback notebooks already hold only the released test
    cells (the hidden tests are in labs/checks/ and run outside the student's kernel), but
    a test cell restored from the gradebook would show its hidden region, in the source
    and in the traceback's code context. (An NbGraderPreprocessor is enabled by default; a
    plain nbconvert Preprocessor named in the config would not run.)
    """

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code" or "BEGIN HIDDEN TESTS" not in cell.source:
            return cell, resources
        cell.source = HIDDEN_TESTS.sub("", cell.source).rstrip("\n")
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                output["traceback"] = [f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"]
        return cell, resources
