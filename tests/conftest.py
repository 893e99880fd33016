import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The suite runs with TensorFlow's oneDNN kernels on, as every entry point does:
# har_tf sets TF_ENABLE_ONEDNN_OPTS before its first TensorFlow import.
import har_tf  # noqa: E402,F401

# isort: split
import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def float64():
    """Runs a test with float64 layers and floatx, then restores both.

    Keras caches its global dtype policy once any layer exists, so floatx alone is
    not enough: the policy must be set too.
    """
    old_floatx, old_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(old_floatx)
    keras.config.set_dtype_policy(old_policy)


@pytest.fixture
def tiny_har():
    """A factory of compiled HARModels on tiny_nets.tiny_backbone (seeded, 3 classes).

    `tiny_har(lam=1.0, tau=[...], optimizer=..., seed=0, compile_kwargs={...})`.
    """
    from tests import harness
    from tests.har_tf import tiny_nets

    def make(*, seed=0, optimizer=None, compile_kwargs=None, **kwargs):
        return harness.har_model(
            tiny_nets.tiny_backbone(seed),
            optimizer=optimizer,
            compile_kwargs=compile_kwargs,
            **kwargs,
        )

    return make


def pytest_collection_modifyitems(config, items):
    """Runs the modules with the most slow-marked tests first; otherwise collection order.

    `make test` hands whole modules to two xdist workers in this order
    (`--no-loadscope-reorder`). A worker is handed its next module while its last two
    tests still run, so a long module handed out late can leave the other worker
    idle until it ends; starting the expensive modules first leaves only short ones
    for the end. Within a module the order is unchanged.
    """

    def module(item):
        return item.nodeid.split("::", 1)[0]

    slow, first = {}, {}
    for i, item in enumerate(items):
        first.setdefault(module(item), i)
        slow[module(item)] = slow.get(module(item), 0) + bool(item.get_closest_marker("slow"))
    items.sort(key=lambda item: (-slow[module(item)], first[module(item)]))


# Seconds each test module took (setup + call + teardown of its tests), summed in the
# process that prints the summary: with xdist that is the controller, which receives
# every worker's reports. `make test` prints them (slowest first) at the end, so a CI
# log shows where its time went (docs/DEVELOPMENT.md, "Test times").
_module_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report):
    module = report.nodeid.split("::", 1)[0]
    _module_seconds[module] = _module_seconds.get(module, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _module_seconds or hasattr(config, "workerinput"):
        return
    total = sum(_module_seconds.values())
    terminalreporter.section(f"seconds per test module (sum {total:.0f} s)")
    for module, seconds in sorted(_module_seconds.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{seconds:8.1f}  {module}")
