"""Settings read the environment and nothing else: typed, checked at boot, no side effects."""
import pytest

from core.settings import ConfigError, Settings, local_secret


def test_parsing_writes_nothing(tmp_path):
    settings = Settings.from_env({"PNEUMOSCREEN_DATA_DIR": str(tmp_path / "var")})
    assert settings.secret_key is None and not (tmp_path / "var").exists()
    assert settings.database_url == f"sqlite:///{tmp_path / 'var' / 'pneumoscreen.db'}"


def test_the_local_secret_is_made_once_and_kept(tmp_path):
    first = local_secret(tmp_path / "var")
    assert len(first) == 64 and local_secret(tmp_path / "var") == first
    assert (tmp_path / "var" / "secret_key").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("value, expected", [("on", True), ("1", True), ("TRUE", True), ("yes", True),
                                             ("off", False), ("0", False), ("no", False), ("", False)])
def test_switches_mean_what_they_say(value, expected):
    assert Settings.from_env({"PNEUMOSCREEN_SECURE_COOKIES": value}).secure_cookies is expected


def test_a_switch_that_is_neither_on_nor_off_is_refused():
    with pytest.raises(ConfigError, match="PNEUMOSCREEN_SECURE_COOKIES must be on or off"):
        Settings.from_env({"PNEUMOSCREEN_SECURE_COOKIES": "enabled"})


def test_dicom_callers_are_read_with_their_departments_and_addresses():
    from core.settings import DicomCaller, dicom_callers

    assert dicom_callers("PACS1=Radiology North@10.1.2.3, 10.1.2.4; CR2=ICU;") == (
        DicomCaller("PACS1", "Radiology North", ("10.1.2.3", "10.1.2.4")), DicomCaller("CR2", "ICU"))
    assert dicom_callers("") == ()


@pytest.mark.parametrize("raw, message", [("PACS1", "must read AE=Department"), ("=Radiology", "must read"),
                                          ("A_VERY_LONG_AE_TITLE_X=R", "not a DICOM AE title"),
                                          ("PACS=R;PACS=S", "names 'PACS' twice")])
def test_bad_dicom_callers_stop_the_start(raw, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"PNEUMOSCREEN_DICOM_CALLERS": raw})


@pytest.mark.parametrize("env, concurrency, threads", [
    ({}, 2, 4),  # a prefork worker: two model processes share the cores out
    ({"PNEUMOSCREEN_WORKER_CONCURRENCY": "3"}, 3, 2),
    ({"PNEUMOSCREEN_WORKER_CONCURRENCY": "16"}, 16, 1),  # never none
    ({"PNEUMOSCREEN_MODEL_THREADS": "5"}, 2, 5),  # said outright: as said
    ({"PNEUMOSCREEN_WORKER_POOL": "solo"}, 1, 0),  # one process: TensorFlow takes every core itself
    ({"PNEUMOSCREEN_WORKER_POOL": "threads"}, 1, 0),
])
def test_a_workers_model_processes_share_the_cores(monkeypatch, env, concurrency, threads):
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(8)))
    settings = Settings.from_env(env)
    assert (settings.worker_concurrency, settings.threads_per_model_process()) == (concurrency, threads)


def test_the_model_precision_is_auto_unless_set_and_a_wrong_one_stops_the_start():
    from core.settings import PRECISION_CHOICES
    from models.precision import CHOICES

    assert PRECISION_CHOICES == CHOICES  # the settings accept what the models know
    assert Settings.from_env({}).model_precision == "auto"
    assert Settings.from_env({"PNEUMOSCREEN_MODEL_PRECISION": "float32"}).model_precision == "float32"
    with pytest.raises(ConfigError, match="PNEUMOSCREEN_MODEL_PRECISION must be auto, float32, bfloat16, got 'fp16'"):
        Settings.from_env({"PNEUMOSCREEN_MODEL_PRECISION": "fp16"})
