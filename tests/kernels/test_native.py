"""The C kernel build: cache, atomic placement, fallbacks and the dispatch modes."""

from __future__ import annotations

import ctypes

import pytest
import torch

from dsv4.kernels import dispatch, native


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DSV4_CACHE_DIR", str(tmp_path))
    native.load.cache_clear()
    native.library.cache_clear()
    yield tmp_path / "native"
    native.load.cache_clear()
    native.library.cache_clear()


def test_build_places_one_library_and_reuses_it(fresh_cache):
    path = native.build("gemm")
    assert path.parent == fresh_cache and path.name.startswith("gemm-") and path.suffix == ".so"
    assert [p.name for p in fresh_cache.iterdir()] == [path.name]  # no temporary file left
    mtime = path.stat().st_mtime_ns
    assert native.build("gemm") == path and path.stat().st_mtime_ns == mtime  # cache hit
    assert isinstance(native.load("gemm"), ctypes.CDLL)


def test_other_flags_build_another_library(fresh_cache, monkeypatch):
    first = native.build("gemm")
    monkeypatch.setenv("DSV4_NATIVE_CFLAGS", "-mno-avx512f")
    assert native.build("gemm") != first


def test_no_compiler_falls_back_with_one_warning(fresh_cache, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-dsv4")
    with pytest.raises(native.NativeBuildError, match="no-such-compiler-dsv4"):
        native.build("gemm")
    with pytest.warns(RuntimeWarning, match="native CPU kernels 'gemm' unavailable"):
        assert native.library("gemm") is None
    x = torch.zeros(1, 4)
    assert dispatch.native_lib("gemm", x) is None  # auto mode: the torch reference
    monkeypatch.setenv("DSV4_KERNELS", "native")
    with pytest.raises(native.NativeBuildError):
        dispatch.native_lib("gemm", x)


def test_compile_error_names_the_source(fresh_cache, tmp_path, monkeypatch):
    src = tmp_path / "csrc"
    src.mkdir()
    (src / "broken.c").write_text("void f(void) { undeclared(); }\n")
    monkeypatch.setattr(native, "_SRC", src)
    with pytest.raises(native.NativeBuildError, match=r"broken\.c"):
        native.build("broken")
    assert not any(fresh_cache.glob("*.so"))  # nothing half-written left behind


def test_dispatch_modes(monkeypatch):
    x = torch.zeros(1, 4)
    monkeypatch.setenv("DSV4_KERNELS", "torch")
    assert dispatch.native_lib("gemm", x) is None
    monkeypatch.setenv("DSV4_KERNELS", "auto")
    assert dispatch.native_lib("gemm", x) is not None
    assert dispatch.native_lib("gemm", x.to("meta")) is None  # not on the CPU
    monkeypatch.setenv("DSV4_KERNELS", "native")
    assert dispatch.native_lib("gemm", x) is not None
    assert not dispatch.use_triton(x)
    monkeypatch.setenv("DSV4_KERNELS", "bogus")
    with pytest.raises(dispatch.DispatchError, match="native"):
        dispatch.native_lib("gemm", x)


def test_ptr_rejects_non_contiguous():
    with pytest.raises(ValueError, match="contiguous CPU tensor"):
        native.ptr(torch.zeros(4, 4).T)


def test_the_mode_is_read_once_per_pinned_block(monkeypatch):
    x = torch.zeros(1, 4)
    monkeypatch.setenv("DSV4_KERNELS", "auto")
    with dispatch.pinned_mode() as mode:
        assert mode == "auto"
        monkeypatch.setenv("DSV4_KERNELS", "torch")
        assert dispatch.kernels_mode() == "auto" and dispatch.native_lib("gemm", x) is not None
    assert dispatch.kernels_mode() == "torch" and dispatch.native_lib("gemm", x) is None


def test_prebuild_compiles_what_is_missing_once_and_says_so(fresh_cache, capsys):
    assert sorted(native.prebuild(("gemm", "rows"))) == ["gemm", "rows"]
    assert "compiling 2 CPU kernel libraries" in capsys.readouterr().err
    assert len(list(fresh_cache.glob("*.so"))) == 2
    assert native.prebuild(("gemm", "rows")) == []  # cached: nothing to do, nothing said
    assert capsys.readouterr().err == ""
    assert set(native.KERNELS) == {p.stem for p in native._SRC.glob("*.c")}


def test_load_model_prebuilds_the_kernels(fresh_cache, monkeypatch):
    from pathlib import Path

    from dsv4.engine import load_model

    built = []
    monkeypatch.setattr(native, "prebuild", lambda: built.append(1) or [])
    golden = Path(__file__).resolve().parent.parent / "data" / "golden" / "checkpoint"
    load_model(golden)
    assert built == [1]
    monkeypatch.setenv("DSV4_KERNELS", "torch")
    load_model(golden)
    assert built == [1]  # the torch references need no C
