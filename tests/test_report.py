"""The report stage summarises whatever stage outputs a run folder holds."""

import h5py
import numpy as np

from leela_interp.report import write_report
from leela_interp.results import label_axes, open_partial, write_strings


def test_report_lists_missing_stages_and_summarises_present_ones(tmp_path):
    with open_partial(tmp_path / "patching.h5", schema="leela_interp.patching/1",
                      config={"a": 1}) as f:
        f.attrs["metric"] = "log-odds of PV[0]"
        f.attrs["sign"] = "positive = reduction"
        write_strings(f, "category_names", ["first_target", "third_target", "later_targets",
                                             "corrupted", "other"])
        base = "residual/resid_post/summary/all"
        mean = np.array([[0.1, 0.5, np.nan, 0.9, 0.2], [0.3, 1.9, np.nan, 0.1, 0.55]])
        label_axes(f.create_dataset(f"{base}/category_max_mean", data=mean), "layer", "category")
        f.create_dataset(f"{base}/category_max_err2sigma", data=np.full_like(mean, 0.04))
        f.create_dataset(f"{base}/category_max_n", data=np.full(mean.shape, 7))
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "patching_resid_post.png").write_bytes(b"png")
    text = write_report(tmp_path).read_text()
    assert "## puzzles.h5" in text and "Not run" in text
    assert "Largest 3rd-move-target effect at layer 1: 1.900 ± 0.040 vs other squares " \
           "0.550 ± 0.040" in text
    assert "positive = reduction" in text
    assert "![patching_resid_post](figures/patching_resid_post.png)" in text
    with h5py.File(tmp_path / "patching.h5") as f:
        assert f.attrs["complete"]
