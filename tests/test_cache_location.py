"""Where results go by default: the checkout's cache/ for the quick start, the user's cache folder when installed."""

from __future__ import annotations

from pathlib import Path

from lldd_core.store import keys


def test_checkout_uses_its_cache_folder():
    root = Path(keys.__file__).resolve().parents[2]
    assert keys._default_dir(root) == root / "cache"


def test_installed_package_uses_the_user_cache_folder(tmp_path, monkeypatch):
    site = tmp_path / "site-packages"  # an installed lldd_core has no app.py or cache/ beside it
    (site / "lldd_core").mkdir(parents=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert keys._default_dir(site) == tmp_path / "xdg" / "lldd"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert keys._default_dir(site) == tmp_path / "home" / ".cache" / "lldd"
