"""Grading the labs with nbgrader: the instructor's workflow (`workflow`) and the
preprocessors that decide what a student's feedback shows (`preprocessors`).

    python -m qlora_lab.grading release labs
    python -m qlora_lab.grading grade labs
"""
