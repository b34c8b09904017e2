"""Fast start: the package and the CLI's metadata commands load no torch."""

from __future__ import annotations

import subprocess
import sys

import zarrstain
from zarrstain import datasets


def _modules_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(','.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    return set(out.stdout.strip().splitlines()[-1].split(","))


def test_import_zarrstain_loads_no_torch():
    loaded = _modules_after("import zarrstain")
    assert "torch" not in loaded and "scipy" not in loaded and "PIL" not in loaded
    assert "zarrstain.engine.predict" not in loaded


def test_help_and_info_load_no_torch(tmp_path):
    store = datasets.make_image(tmp_path / "img.zarr", shape=(1, 4, 32, 32))
    run = "from zarrstain.cli.main import main\ntry:\n    main()\nexcept SystemExit:\n    pass"
    for argv in (["--help"], ["info", str(store)], ["predict", "--help"]):
        loaded = _modules_after(f"sys.argv = ['zarrstain', *{argv!r}]\n{run}")
        assert "torch" not in loaded, argv
        if argv == ["--help"]:  # within the yardstick `import dask, zarr, xarray`
            assert "dask.array" not in loaded


def test_lazy_names_are_the_same_objects():
    from zarrstain.engine.normalize import normalize
    from zarrstain.engine.predict import predict
    from zarrstain.io import write_channels

    assert zarrstain.predict is predict and zarrstain.normalize is normalize
    assert zarrstain.write_channels is write_channels
    assert set(zarrstain.__all__) <= set(dir(zarrstain))
    import zarrstain.engine.predict as module  # noqa: F401 - loading the module keeps the function

    assert callable(zarrstain.predict) and zarrstain.predict is predict


def test_unknown_attribute_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        zarrstain.nope  # noqa: B018
