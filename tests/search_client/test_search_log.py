"""What a search says at its end: the derive rule's changes to the argmax and each device's verdict."""

from __future__ import annotations

from search_client.nas.search_log import derive_changes, derive_lines
from search_client.nas.within_target import Derived

NAMES = [("3x3_MBConv3", "5x5_MBConv6", "zero"), ("3x3_MBConv3", "zero"), ("7x7_MBConv6", "3x3_MBConv3")]


def _derived(choices: list[int], argmax: list[int], ratios: list[float], met: list[bool]) -> Derived:
    return Derived(choices, sum(ratios) / len(ratios), argmax, 1.2, "within-target", all(met), ratios,
                   [1.2] * len(ratios), met, 0.0 if choices == argmax else 1.25)


def test_a_changed_argmax_names_its_cells_and_what_was_given_up() -> None:
    derived = _derived([2, 1, 0], [1, 1, 1], [1.02, 0.97], [True, True])
    assert derived.changed_cells == [0, 2]
    assert derive_changes(derived, NAMES) == [{"cell": 0, "argmax": "5x5_MBConv6", "exported": "zero"},
                                              {"cell": 2, "argmax": "3x3_MBConv3", "exported": "7x7_MBConv6"}]
    lines = derive_lines(derived, NAMES, ["a/ort-cpu", "b/ort-cpu"], [0.12, 0.08], (0.9, 1.1))
    assert lines[0] == ("derive (within-target): the most probable architecture within every device's target; "
                        "meets the target on every device (latency ratio in [0.9, 1.1])")
    assert lines[1] == ("derive changed the argmax in 2 cell(s): 0 (5x5_MBConv6 -> zero), "
                        "2 (3x3_MBConv3 -> 7x7_MBConv6); log-probability given up 1.250")
    assert lines[2] == ("a/ort-cpu: predicted 0.1224 ms, target 0.1200 ms, latency ratio 1.020 (+2.0%), meets its "
                        "target; the argmax's 1.200")
    assert lines[3].startswith("b/ort-cpu: predicted 0.0776 ms, target 0.0800 ms, latency ratio 0.970 (-3.0%), meets")
    assert lines[4].startswith("combined latency ratio 0.995")


def test_a_kept_argmax_says_so_and_each_device_that_misses_is_named() -> None:
    derived = _derived([1, 1, 1], [1, 1, 1], [1.0, 1.27], [True, False])
    assert derive_changes(derived, NAMES) == []
    lines = derive_lines(derived, NAMES, ["a/ort-cpu", "b/ort-cpu"], [0.12, 0.08], (0.9, 1.1))
    assert lines[0] == ("derive (within-target): the argmax architecture; MISSES the target (latency ratio in "
                        "[0.9, 1.1]) on 1 of 2 device(s)")
    assert lines[1] == "derive kept the argmax"
    assert "latency ratio 1.000 (+0.0%), meets its target" in lines[2]
    assert "latency ratio 1.270 (+27.0%), MISSES its target" in lines[3]
    one = derive_lines(_derived([1, 1, 1], [1, 1, 1], [1.0], [True]), NAMES, ["a/ort-cpu"], [0.12], (0.0, 1.0))
    assert len(one) == 3 and "latency ratio in [0, 1]" in one[0]  # one device: no combined ratio to tell apart
