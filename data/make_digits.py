"""Regenerate the bundled digits data set from scikit-learn's digits (needs scikit-learn).

    python data/make_digits.py [OUT]

OUT defaults to the package copy, ``admm_mpi/datasets/digits.h5`` (what ``--data digits`` reads,
also in an installed package); ``data/digits.h5`` is a symbolic link to it, so there is one copy.

1 797 images of 8x8 pixels, 10 classes. Pixels are divided by 16 so they lie in [0, 1].
Split: stratified by class, 1 500 training and 297 test images, with
``sklearn.model_selection.train_test_split(test_size=297, stratify=y, random_state=0)``.
"""

import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from admm_mpi.data import write_dataset

# the real file (write_dataset renames a temporary file over its target, which would replace the
# data/digits.h5 link by a second copy)
PACKAGE_COPY = Path(__file__).resolve().parents[1] / "admm_mpi" / "datasets" / "digits.h5"


def main(out):
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)  # k/16 is exact in float32
    y = digits.target.astype(np.int64)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=297, stratify=y, random_state=0)
    write_dataset(
        out, X_train, y_train, X_test, y_test,
        name="digits", n_classes=10, classes=list(range(10)),
        preprocessing="scikit-learn load_digits; pixels / 16 -> [0, 1]; stratified split "
        "train_test_split(test_size=297, stratify=y, random_state=0)",
    )
    print(f"wrote {out}: {len(y_train)} train, {len(y_test)} test, 64 features, 10 classes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(PACKAGE_COPY))
