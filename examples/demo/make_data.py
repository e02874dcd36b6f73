"""Write the demo's synthetic cell-painting-like dataset (REFERENCE_DATA.h5).

Deterministic: the same file every time. 300 wells: 30 compounds (SMILES) x 10 wells, doses 0.1-10 uM,
20 morphology features measured before (pre) and after (post) treatment, and 5 folds grouped by compound.
A compound's effect depends on its atom composition and grows with log dose, so a model that reads the
SMILES beats one that only knows the dose. Run: python make_data.py OUT.h5 (needs numpy and h5py).
"""
import sys

import h5py
import numpy as np

SMILES = [
    "CCO", "CCN", "CCCl", "c1ccccc1", "c1ccccc1O", "c1ccccc1N", "CC(=O)O", "CC(=O)N", "OCCO", "NCCN",
    "ClCCCl", "c1ccncc1", "c1ccoc1", "CC(C)O", "CCCCO", "CCCCN", "OC(=O)CCl", "c1ccc(Cl)cc1", "c1ccc(O)c(O)c1",
    "NC(=O)c1ccccc1", "CCOCC", "CNC", "CC#N", "OC1CCCCC1", "NC1CCCCC1", "ClC(Cl)Cl", "c1cc(N)ccc1O",
    "CCCCCC", "OCC(O)CO", "c1ccc2ccccc2c1",
]
N_FEAT, WELLS = 20, 10


def composition(s):
    return np.array([s.count("C") + s.count("c"), s.count("N") + s.count("n"), s.count("O") + s.count("o"),
                     s.count("Cl"), s.count("1") / 2.0], dtype=float)


def main(out):
    rng = np.random.default_rng(22)
    mix = rng.normal(0, 0.6, size=(5, N_FEAT))
    shares = np.array([composition(s) / (1 + composition(s).sum()) for s in SMILES])
    shares -= 0.8 * shares.mean(axis=0)  # a small average effect: the dose alone tells a little
    rows = []
    for ci, s in enumerate(SMILES):
        effect = shares[ci] @ mix * 3.0
        for w in range(WELLS):
            dose = float(rng.choice([0.1, 0.3, 1.0, 3.0, 10.0]))
            pre = rng.normal(0, 1, N_FEAT)
            post = pre + effect * np.log10(dose * 10 + 1) + rng.normal(0, 0.5, N_FEAT)
            rows.append((s, ci, dose, pre, post))
    order = rng.permutation(len(SMILES))
    fold_of = {int(c): i % 5 for i, c in enumerate(order)}
    with h5py.File(out, "w") as f:
        f.create_dataset("features/pre", data=np.array([r[3] for r in rows], dtype="float32"))
        f.create_dataset("features/post", data=np.array([r[4] for r in rows], dtype="float32"))
        f.create_dataset("meta/smiles", data=np.array([r[0] for r in rows], dtype="S"))
        f.create_dataset("meta/dose_um", data=np.array([r[2] for r in rows], dtype="float32"))
        f.create_dataset("meta/fold", data=np.array([fold_of[r[1]] for r in rows], dtype="int8"))
        f.create_dataset("meta/feature_names",
                         data=np.array([f"Cells_AreaShape_F{i:02d}" for i in range(N_FEAT)], dtype="S"))
        f.attrs["description"] = "synthetic cell-painting-like profiles for the cellsci demo"


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "REFERENCE_DATA.h5")
