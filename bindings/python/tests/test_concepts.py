"""The Python package end to end on the embedded toy model: a toy dataset, a concept trained,
installed and recognised, a streamed chat, and clear exceptions for bad input.

Run by .ci/run after `pip install ./bindings/python`: `python3 -m pytest bindings/python/tests`.
"""

import pathlib
import threading

import pytest

import concepts


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A toy dataset of two held-out subjects and a fresh registry."""
    root = tmp_path_factory.mktemp("concepts")
    data = root / "data"
    subjects = concepts.toy_dataset(data, seed=5, subjects=2)
    assert len(subjects) == 2
    rt = concepts.Runtime(home=root / "home")
    return rt, data, subjects


@pytest.fixture(scope="module")
def trained(world):
    """The first subject trained from a list of paths (small settings: this is a test)."""
    rt, data, subjects = world
    name = list(subjects)[0]
    photos = sorted((data / name / "train").iterdir())
    events = []
    package = rt.train(
        name,
        [str(p) for p in photos],
        negatives=data / "negatives",
        progress=events.append,
        epochs=2,
        questions=1,
        # The latents start at the words of the subject's description.
        init=f"text:{subjects[name]}",
    )
    return pathlib.Path(package), events


def test_train_reports_progress_and_writes_a_package(world, trained):
    rt, _, subjects = world
    names = list(subjects)
    package, events = trained
    assert package.is_file() and package.suffix == ".ycpt"
    assert package.name == f"{names[0]}.ycpt"
    kinds = {e["event"] for e in events}
    assert "epoch" in kinds and "phase" in kinds, events
    epochs = [e for e in events if e["event"] == "epoch"]
    assert 1 <= len(epochs) <= 2
    assert all(0.0 <= e["recognition"] <= 1.0 for e in epochs)


def test_install_list_recognise_remove(world, trained, tmp_path):
    rt, data, subjects = world
    names = list(subjects)
    package, _ = trained
    concept = rt.install(package)
    assert concept.name == names[0] and concept.identifier == f"<{names[0]}>"
    assert len(concept.digest) == 64
    assert [c.name for c in rt.list()] == [names[0]]

    photo = sorted((data / names[0] / "test").iterdir())[0]
    scores = rt.recognise(photo, names[0])
    score = scores[names[0]]
    assert 0.0 <= score.p_yes <= 1.0 and 0.0 <= score.p_no <= 1.0
    assert score.present == (score.p_yes > score.p_no)

    # The same photo as bytes, as a numpy array and as a PIL image gives the same read-out
    # (numpy and PIL go through a lossless PNG of the same pixels).
    by_bytes = rt.recognise(photo.read_bytes(), [names[0]])[names[0]]
    assert by_bytes.p_yes == pytest.approx(score.p_yes, abs=1e-9)
    np = pytest.importorskip("numpy")
    Image = pytest.importorskip("PIL.Image")
    pil = Image.open(photo).convert("RGB")
    by_pil = rt.recognise(pil, [names[0]])[names[0]]
    by_array = rt.recognise(np.asarray(pil), [names[0]])[names[0]]
    assert by_pil.p_yes == pytest.approx(score.p_yes, abs=1e-6)
    assert by_array.p_yes == pytest.approx(by_pil.p_yes, abs=1e-12)

    # Every installed concept when none is named: the scan.
    assert set(rt.recognise(photo)) == {names[0]}

    removed = rt.remove(names[0])
    assert removed.digest == concept.digest
    assert rt.list() == []


def test_chat_streams_the_same_answer(world, trained):
    rt, data, subjects = world
    names = list(subjects)
    package, _ = trained
    rt.install(package, replace=True)
    photo = sorted((data / names[0] / "test").iterdir())[0]
    messages = [{"role": "user", "content": f"Is <{names[0]}> in this photo?", "image": photo}]
    whole = rt.chat(messages, max_tokens=8)
    assert isinstance(whole, str) and whole
    stream = rt.chat(messages, max_tokens=8, stream=True)
    pieces = list(stream)
    assert len(pieces) >= 1
    assert "".join(pieces) == whole == stream.text
    # No image: a text question about the concept.
    assert isinstance(rt.chat(f"What colour is <{names[0]}>?", max_tokens=4), str)


def test_calls_from_threads_share_one_runtime(world, trained):
    rt, data, subjects = world
    names = list(subjects)
    photo = sorted((data / names[1] / "test").iterdir())[0]
    results = []

    def ask():
        results.append(rt.chat([{"role": "user", "content": "Describe the image.", "image": photo}],
                               max_tokens=6))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]


def test_bad_input_raises_clear_exceptions(world, tmp_path):
    rt, data, subjects = world
    names = list(subjects)
    with pytest.raises(concepts.ModelError, match="no-such-model"):
        concepts.Runtime(model_dir=tmp_path / "no-such-model", home=tmp_path / "h")

    bad = tmp_path / "bad.ycpt"
    bad.write_bytes(b"YCPT not a package")
    with pytest.raises(concepts.PackageError, match="bad.ycpt"):
        rt.install(bad)
    assert issubclass(concepts.PackageError, concepts.ConceptsError)

    with pytest.raises(concepts.NotFoundError, match="ghost"):
        rt.remove("ghost")

    photo = sorted((data / names[0] / "test").iterdir())[0]
    with pytest.raises(concepts.NotFoundError, match="ghost"):
        rt.recognise(photo, ["ghost"])

    with pytest.raises(concepts.InvalidInputError):
        rt.chat([{"role": "user", "content": "Describe the image.", "image": b"not an image"}])
    with pytest.raises(concepts.InvalidInputError, match="expected an image"):
        rt.recognise(12345)
    with pytest.raises(concepts.InvalidInputError, match="role"):
        rt.chat([{"role": "robot", "content": "hi"}])
    np = pytest.importorskip("numpy")
    with pytest.raises(concepts.InvalidInputError, match="uint8"):
        rt.recognise(np.zeros((8, 8, 3), dtype=np.float32))

    with pytest.raises(concepts.InvalidInputError, match="3"):
        rt.train("few", [str(photo)], negatives=data / "negatives", epochs=1)
    with pytest.raises(concepts.InvalidInputError, match="concept name"):
        rt.train("Not A Name", data / names[0] / "train", negatives=data / "negatives", epochs=1)
    with pytest.raises(concepts.InvalidInputError, match="at most 10"):
        rt.train("many", data / names[0] / "train", negatives=data / "negatives", questions=11)
    with pytest.raises(concepts.InvalidInputError, match="init"):
        rt.train("badinit", data / names[0] / "train", negatives=data / "negatives",
                 init="sideways", epochs=1)
    with pytest.raises(concepts.InvalidInputError, match="negative pool"):
        rt.train("nopool", data / names[0] / "train", negatives=tmp_path / "missing", epochs=1)


def test_a_raising_progress_callback_stops_training(world):
    rt, data, subjects = world
    names = list(subjects)

    def stop(event):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        rt.train(names[1], data / names[1] / "train", negatives=data / "negatives",
                 progress=stop, epochs=1, questions=1)


def test_ctrl_c_interrupts_training_cleanly(world, tmp_path):
    """SIGINT during a long call raises KeyboardInterrupt in the caller, writes no package and
    leaves the interpreter usable."""
    import signal
    import subprocess
    import sys

    rt, data, subjects = world
    names = list(subjects)
    script = f"""
import sys, concepts
rt = concepts.Runtime(home={str(tmp_path / 'home')!r})
started = []
def progress(event):
    if not started:
        started.append(1)
        print("started", flush=True)
try:
    rt.train({names[1]!r}, {str(data / names[1] / 'train')!r}, negatives={str(data / 'negatives')!r},
             progress=progress, epochs=50, output={str(tmp_path / 'out.ycpt')!r})
except KeyboardInterrupt:
    print("interrupted", flush=True)
    print(len(rt.list()), flush=True)
    sys.exit(0)
print("finished", flush=True)
sys.exit(1)
"""
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "started"
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=300)
    finally:
        child.kill()
    assert child.returncode == 0, out
    assert out.split() == ["interrupted", "0"], out
    assert not (tmp_path / "out.ycpt").exists()
