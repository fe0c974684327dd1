#!/usr/bin/env python3
"""Rewrites the four Fed-Heart-Disease hospital files as four hospitals
might keep them: each with its own column names, column order, codings,
units and missing-value token. The rows, their order and their values are
the originals' (cholesterol in mmol/L is the original mg/dL over 38.67,
written with six decimals; an age is kept as a birth year, 1988 minus the
age), so that a plan reading these files through the mappings in
examples/mappings/ loads exactly the original data.

    python3 data/uci-heart-disease/rewritten/make_rewritten.py

Standard library only; writes next to this script.
"""

import csv
import os

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(HERE)
ORIGINAL = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg",
            "thalach", "exang", "oldpeak", "slope", "ca", "thal", "num"]
MG_PER_MMOL = 38.67
PAIN = {"1": "typical angina", "2": "atypical angina",
        "3": "non-anginal pain", "4": "asymptomatic"}


def number(text):
    """'1.0' and '1' alike, as a canonical string."""
    value = float(text)
    return str(int(value)) if value == int(value) else text


def mmol(text):
    return "%.6f" % (float(text) / MG_PER_MMOL)


# Per site: its missing token, and its columns in its own order, each
# (its name, the original column, how the value is written).
SITES = {
    "cleveland": ("NA", [
        ("Age (years)", "age", None),
        ("Sex", "sex", lambda v: {"1": "M", "0": "F"}[number(v)]),
        ("Chest pain type", "cp", None),
        ("Resting BP (mm Hg)", "trestbps", None),
        ("Cholesterol (mg/dL)", "chol", None),
        ("Fasting blood sugar > 120", "fbs", None),
        ("Resting ECG", "restecg", None),
        ("Max heart rate", "thalach", None),
        ("Exercise angina", "exang", None),
        ("ST depression", "oldpeak", None),
        ("Diagnosis", "num", None),
    ]),
    "hungarian": ("", [
        ("num", "num", None),
        ("gender", "sex", lambda v: {"1": "male", "0": "female"}[number(v)]),
        ("patient_age", "age", None),
        ("chest_pain", "cp", lambda v: PAIN[number(v)]),
        ("chol_mmol", "chol", mmol),
        ("resting_bp", "trestbps", None),
        ("fasting_bs", "fbs", None),
        ("rest_ecg", "restecg", None),
        ("max_hr", "thalach", None),
        ("exercise_angina", "exang", lambda v: {"1": "yes", "0": "no"}[number(v)]),
        ("st_depression", "oldpeak", None),
    ]),
    "switzerland": ("?", [
        ("AGE_YRS", "age", None),
        ("SEX", "sex", None),
        ("CP", "cp", None),
        ("TRESTBPS", "trestbps", None),
        ("CHOL", "chol", None),
        ("FBS", "fbs", None),
        ("RESTECG", "restecg", None),
        ("THALACH", "thalach", None),
        ("EXANG", "exang", None),
        ("OLDPEAK", "oldpeak", None),
        ("SLOPE", "slope", None),
        ("NUM", "num", None),
    ]),
    "va": ("", [
        ("birth_year", "age", lambda v: str(1988 - int(float(v)))),
        ("sex", "sex", lambda v: {"1": "M", "0": "F"}[number(v)]),
        ("cp", "cp", None),
        ("bp_rest", "trestbps", None),
        ("cholesterol", "chol", mmol),
        ("fbs", "fbs", None),
        ("ecg", "restecg", None),
        ("hr_max", "thalach", None),
        ("angina", "exang", None),
        ("oldpeak", "oldpeak", None),
        ("outcome", "num", None),
    ]),
}


def main():
    for site, (missing, columns) in SITES.items():
        with open(os.path.join(SOURCE, "processed.%s.data" % site)) as f:
            rows = [line.strip().split(",") for line in f if line.strip()]
        out = os.path.join(HERE, "%s.csv" % site)
        with open(out, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow([name for name, _, _ in columns])
            for row in rows:
                values = dict(zip(ORIGINAL, row))
                written = []
                for _, original, how in columns:
                    value = values[original]
                    if value == "?":
                        written.append(missing)
                    else:
                        written.append(how(value) if how else value)
                writer.writerow(written)
        print("%s: %d rows" % (out, len(rows)))


if __name__ == "__main__":
    main()
