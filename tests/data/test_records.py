"""HeadMesh validation and the atomic .npz storage every prepared file goes through."""

import os

import numpy as np
import pytest

from npht.data.records import HeadMesh, atomic_save_npz, load_mesh, load_npz, save_mesh


def tetra(**kw):
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float) * 0.5
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    args = dict(vertices=v, faces=f, face_region=np.array([1, 0, 0, 1], bool), identity="a", expression="neutral",
                is_neutral=True)
    args.update(kw)
    return HeadMesh(**args)


def test_roundtrip(tmp_path):
    plane = (np.array([0.0, -0.4, 0.0]), np.array([0.0, 1.0, 0.0]))
    m = tetra(registration_vertices=np.zeros((3, 3)), registration_faces=np.array([[0, 1, 2]]),
              meta={"cut_plane": plane})
    save_mesh(tmp_path / "m.npz", m)
    back = load_mesh(tmp_path / "m.npz")
    for name in ("vertices", "faces", "face_region", "registration_vertices", "registration_faces"):
        np.testing.assert_array_equal(getattr(back, name), getattr(m, name))
    assert (back.identity, back.expression, back.is_neutral, back.key) == ("a", "neutral", True, "a/neutral")
    np.testing.assert_array_equal(np.asarray(back.meta["cut_plane"]), np.stack(plane))
    assert back.vertices.dtype == np.float64 and back.faces.dtype == np.int64
    assert back.to_trimesh().is_watertight
    t = tetra()
    v, f = t.registration()  # no registration: the mesh itself
    assert v is t.vertices and f is t.faces
    np.testing.assert_array_equal(back.registration()[0], m.registration_vertices)


@pytest.mark.parametrize("kw, match", [
    (dict(vertices=np.zeros((4, 2))), r"vertices must be \[V, 3\]"),
    (dict(faces=np.zeros((4, 4), int)), r"faces must be \[F, 3\]"),
    (dict(faces=np.array([[0, 1, 9]])), "out of range"),
    (dict(face_region=np.zeros(3, bool)), r"face_region must be \[V\]"),
    (dict(registration_vertices=np.zeros((3, 3))), "go together"),
])
def test_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        tetra(**kw)


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "x.npz"
    atomic_save_npz(path, a=np.arange(3))

    class Boom:
        def __array__(self, *a, **k):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_save_npz(path, a=np.arange(5), b=Boom())
    np.testing.assert_array_equal(load_npz(path)["a"], np.arange(3))
    assert os.listdir(tmp_path) == ["x.npz"]  # the temporary file is gone


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_npz(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    atomic_save_npz(bad, a=np.arange(1000))
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated file .*bad.npz"):
        load_npz(bad)
    atomic_save_npz(tmp_path / "other.npz", a=np.arange(3))
    with pytest.raises(ValueError, match="not a npht mesh file"):
        load_mesh(tmp_path / "other.npz")
