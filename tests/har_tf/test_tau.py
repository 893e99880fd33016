import numpy as np
import pytest

from har_tf import tau as tau_lib


def test_estimate_tau_hand_computed_with_zero_error_class():
    # 0.5^0.6 / 100^0.4 = 0.104564, 0^0.6 / 1000^0.4 = 0, 0.2^0.6 / 10^0.4 = 0.151572
    tau = tau_lib.estimate_tau([0.5, 0.0, 0.2], [100, 1000, 10])
    np.testing.assert_allclose(tau, [0.68986, 0.0, 1.0], atol=1e-5)


def test_estimate_tau_unnormalized_and_exponents():
    tau = tau_lib.estimate_tau([0.5, 0.2], [100, 10], normalize=False)
    np.testing.assert_allclose(tau, [0.1045640, 0.1515717], rtol=1e-6)
    tau = tau_lib.estimate_tau(
        [0.25, 1.0], [4, 16], uncertainty_exponent=0.5, density_exponent=0.5, normalize=False
    )
    np.testing.assert_allclose(tau, [0.5 / 2, 1.0 / 4])


def test_error_floor_keeps_zero_error_class_regularized():
    tau = tau_lib.estimate_tau([0.0, 0.5], [10, 10], error_floor=0.01)
    np.testing.assert_allclose(tau, [(0.01 / 0.5) ** 0.6, 1.0])


@pytest.mark.parametrize(
    "errors,counts,match",
    [
        ([0.1, np.nan], [10, 10], "class 1 has no held-out example"),
        ([0.1, 0.2], [10, 0], "class 1 has no training example"),
        ([0.1, 1.5], [10, 10], "class 1: error 1.5"),
        ([0.0, 0.0], [10, 10], "every class has zero validation error"),
        ([0.1], [10, 10], "equal length"),
    ],
)
def test_estimate_tau_rejects_bad_input(errors, counts, match):
    with pytest.raises(ValueError, match=match):
        tau_lib.estimate_tau(errors, counts)


def test_per_class_error_hand_computed():
    labels = [0, 0, 0, 1, 1, 2]
    preds = [0, 1, 1, 1, 1, 0]
    errors, support = tau_lib.per_class_error(labels, preds, 4)
    np.testing.assert_allclose(errors[:3], [2 / 3, 0.0, 1.0])
    assert np.isnan(errors[3])
    np.testing.assert_array_equal(support, [3, 2, 1, 0])


def test_per_class_error_rejects_label_out_of_range():
    with pytest.raises(ValueError, match=r"labels\[1\] = 5 is outside \[0, 3\)"):
        tau_lib.per_class_error([0, 5], [0, 0], 3)


def test_class_balanced_weights_hand_computed():
    # beta 0.5: (1 - 0.5) / (1 - 0.5^1) = 1, (1 - 0.5) / (1 - 0.5^2) = 2/3; sum to C = 2.
    np.testing.assert_allclose(tau_lib.class_balanced_weights([1, 2], beta=0.5), [1.2, 0.8])
    np.testing.assert_allclose(tau_lib.class_balanced_weights([5, 500], beta=0.0), [1.0, 1.0])
    w = tau_lib.class_balanced_weights([600, 6000, 6000])
    assert w.sum() == pytest.approx(3.0) and w[0] > w[1] == pytest.approx(w[2])
    with pytest.raises(ValueError, match="beta"):
        tau_lib.class_balanced_weights([1, 2], beta=1.0)
    with pytest.raises(ValueError, match="counts"):
        tau_lib.class_balanced_weights([0, 2])
