"""Reference values for the report statistics tests (run: python scipy_reference.py).

Computed with scipy 1.17.1 / numpy 2.4.6. The paired t-test is scipy.stats.ttest_rel(model, baseline)
(statistic, pvalue, confidence_interval(0.95)); Cohen's d_z is d.mean() / d.std(ddof=1) with
d = model - baseline; the Wilcoxon test is scipy.stats.wilcoxon(model, baseline) with its defaults;
Holm's adjustment is computed by hand below (step-down, monotone, capped at 1).
The printed numbers are hard-coded in src/report/stats.rs (unit tests) and tests/it/report.rs.
"""
import json
import numpy as np
import scipy
from scipy import stats

print("# scipy", scipy.__version__, "numpy", np.__version__)


def paired(name, a, b):
    a = np.array(a, dtype=float)
    b = np.array(b, dtype=float)
    d = a - b
    t = stats.ttest_rel(a, b)
    ci = t.confidence_interval(0.95)
    w = stats.wilcoxon(a, b)
    print(name, json.dumps(dict(t=float(t.statistic), p=float(t.pvalue), lo=float(ci.low), hi=float(ci.high),
                                dz=float(d.mean() / d.std(ddof=1)), wilcoxon_p=float(w.pvalue))))
    return float(t.pvalue)


def holm(ps):
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    out = [0.0] * m
    run = 0.0
    for rank, i in enumerate(order):
        run = max(run, min(1.0, (m - rank) * ps[i]))
        out[i] = run
    return out


# --- unit-test cases (src/report/stats.rs) ---
rng = np.random.default_rng(7)
cases = {}
cases["n5"] = ([0.52, 0.48, 0.55, 0.50, 0.47], [0.45, 0.44, 0.50, 0.46, 0.41])
cases["n10_mixed"] = ([0.31, 0.29, 0.35, 0.30, 0.28, 0.33, 0.36, 0.27, 0.32, 0.30],
                      [0.30, 0.31, 0.32, 0.29, 0.30, 0.31, 0.33, 0.28, 0.30, 0.31])
cases["ties_n6"] = ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.5, 1.5, 3.5, 3.0, 4.0, 5.5])
cases["zeros_n8"] = ([1, 2, 3, 4, 5, 6, 7, 8], [1, 1.5, 3, 3.2, 4.1, 6, 6.5, 7.7])
a = np.round(rng.normal(1, 0.1, 20), 2); b = np.round(a - rng.normal(0.02, 0.05, 20), 2)
cases["ties_n20"] = (a.tolist(), b.tolist())
a = rng.normal(1, 0.1, 30); b = a - rng.normal(0.01, 0.05, 30)
cases["n30_exact"] = (a.tolist(), b.tolist())
a = rng.normal(1, 0.1, 60); b = a - rng.normal(0.01, 0.05, 60)
cases["n60_normal"] = (a.tolist(), b.tolist())
cases["n7_exact"] = ([0.613, 0.579, 0.734, 0.652, 0.701, 0.588, 0.667], [0.600, 0.600, 0.700, 0.610, 0.646, 0.596, 0.600])
cases["tiny_p"] = ([10.0, 10.1, 10.2, 10.3, 10.4, 10.5, 10.6, 10.7], [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.71])
for k, (a, b) in cases.items():
    paired(k, a, b)

# --- integration-test cases (tests/it/report.rs) ---
# layouts/canonical.json, MSE: MLP vs Ridge over fold_0..fold_2
paired("canonical_mse", [0.25, 0.27, 0.24], [0.30, 0.32, 0.31])
# layouts/nan.json, MSE: MLP's fold_1 is NaN, so the test runs over fold_0, fold_2, fold_3
paired("nan_mse", [0.25, 0.24, 0.26], [0.30, 0.31, 0.33])
# zero variance case: B = A - 0.05 in every fold (t-test impossible); Wilcoxon by permutation
print("zero_var_wilcoxon", float(stats.wilcoxon([0.25, 0.27, 0.26, 0.29], [0.30, 0.32, 0.31, 0.34]).pvalue))
# three models against one baseline, Holm across them
base = [0.40, 0.42, 0.41, 0.43, 0.39]
ps = [paired("holm_A", [0.35, 0.36, 0.37, 0.36, 0.34], base),
      paired("holm_B", [0.41, 0.40, 0.42, 0.41, 0.40], base),
      paired("holm_C", [0.38, 0.41, 0.39, 0.40, 0.37], base)]
print("holm", holm(ps))
# partially matching folds: baseline has fold_0..3, model has fold_1..4 -> test over fold_1..3
paired("partial", [0.21, 0.25, 0.22], [0.30, 0.31, 0.33])
