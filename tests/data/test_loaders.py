"""MeshFolder and NPHMFolder on small spheres and boxes written into tmp_path."""

import json
import os

import numpy as np
import pytest
import trimesh

from npht.data.loaders import (MeshFolder, NPHMFolder, above_plane, default_face_region, flame_cut_plane,
                               keep_above_plane, read_mesh)


def sphere(subdivisions=2, radius=0.5, shift=(0, 0, 0)):
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return np.asarray(m.vertices) + shift, np.asarray(m.faces)


def box(extents=(0.6, 0.8, 0.5)):
    m = trimesh.creation.box(extents=extents)
    return np.asarray(m.vertices), np.asarray(m.faces)


def write(path, v, f):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    trimesh.Trimesh(v, f, process=False).export(path)


def fake_flame(cut_y=-0.4):
    """5023 vertices above y = cut_y, the three cut vertices on that plane (a FLAME stand-in)."""
    rng = np.random.default_rng(0)
    v = rng.uniform(-0.3, 0.3, size=(5023, 3)) + [0, 0.1, 0]
    v[[3276, 3207, 3310]] = [[-0.1, cut_y, 0.0], [0.1, cut_y, 0.05], [0.0, cut_y, -0.1]]
    return v, np.array([[0, 1, 2], [2, 3, 4]])


# the same four meshes in both layouts
MESHES = {
    ("a", "neutral"): sphere(2),
    ("a", "smile"): sphere(2, radius=0.45, shift=(0, 0.02, 0)),
    ("b", "neutral"): box(),
    ("b", "frown"): box((0.6, 0.7, 0.5)),
}
SMILE_MASK = sphere(2)[0][:, 1] > 0.1
REGISTRATION = {("a", "neutral"): sphere(1), ("a", "smile"): sphere(1, radius=0.45)}


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "heads"
    for (i, e), (v, f) in MESHES.items():
        write(str(root / i / (f"{e}.obj" if e == "smile" else f"{e}.ply")), v, f)
    np.save(root / "a" / "smile.face.npy", SMILE_MASK)
    for (i, e), (v, f) in REGISTRATION.items():
        write(str(root / i / "registration" / f"{e}.ply"), v, f)
    return root


@pytest.fixture
def nphm(tmp_path):
    root = tmp_path / "nphm"
    names = {"a": "017", "b": "018"}
    expr = {"neutral": "000", "smile": "003", "frown": "001"}
    for (i, e), (v, f) in MESHES.items():
        d = root / names[i] / expr[e]
        write(str(d / "scan.ply"), v, f)
        if (i, e) in REGISTRATION:
            write(str(d / "registration.ply"), *REGISTRATION[(i, e)])
    np.save(root / "017" / "003" / "face_region.npy", SMILE_MASK)
    write(str(root / "017" / "003" / "flame.ply"), *fake_flame())
    (root / "018" / "002").mkdir()  # an expression folder without scan.ply is not an expression
    return root


def test_mesh_folder_records(folder):
    loader = MeshFolder(folder)
    assert loader.identities() == ["a", "b"]
    assert loader.expressions("a") == ["neutral", "smile"] and loader.expressions("b") == ["neutral", "frown"]
    assert len(loader) == 4 and list(loader) == list(loader.keys()) == [
        ("a", "neutral"), ("a", "smile"), ("b", "neutral"), ("b", "frown")]
    for key, mesh in loader.items():
        v, f = MESHES[key]
        np.testing.assert_allclose(mesh.vertices, v, atol=1e-6)
        np.testing.assert_array_equal(mesh.faces, f)
        assert (mesh.identity, mesh.expression, mesh.is_neutral) == (key[0], key[1], key[1] == "neutral")
        expected = SMILE_MASK if key == ("a", "smile") else default_face_region(mesh.vertices)
        np.testing.assert_array_equal(mesh.face_region, expected)
        if key in REGISTRATION:
            np.testing.assert_allclose(mesh.registration_vertices, REGISTRATION[key][0], atol=1e-6)
            np.testing.assert_array_equal(mesh.registration()[1], REGISTRATION[key][1])
        else:
            assert mesh.registration_vertices is None and mesh.registration()[0] is mesh.vertices
    assert ("a", "smile") in loader and ("a", "sad") not in loader
    with pytest.raises(KeyError, match="has no expression 'sad'"):
        loader[("a", "sad")]
    with pytest.raises(KeyError, match="unknown identity 'c'"):
        loader[("c", "neutral")]
    with pytest.raises(KeyError, match=r"\(identity, expression\) pairs"):
        loader["a"]


def test_nphm_folder_matches_the_mesh_folder(folder, nphm):
    a, b = MeshFolder(folder), NPHMFolder(nphm, neutrals={"017": "000", 18: 0})
    assert b.identities() == ["017", "018"]
    assert b.expressions("017") == ["000", "003"] and b.expressions("018") == ["000", "001"]
    for (ia, ea), (ib, eb) in zip(a.keys(), b.keys()):
        ma, mb = a[(ia, ea)], b[(ib, eb)]
        np.testing.assert_allclose(ma.vertices, mb.vertices, atol=1e-6)  # .obj stores decimals, .ply float32
        np.testing.assert_array_equal(ma.faces, mb.faces)
        np.testing.assert_array_equal(ma.face_region, mb.face_region)
        assert ma.is_neutral == mb.is_neutral
        assert (ma.registration_vertices is None) == (mb.registration_vertices is None)
    plane = b[("017", "003")].meta["cut_plane"]
    np.testing.assert_allclose(plane[0][1], -0.4)
    np.testing.assert_allclose(np.abs(plane[1]), [0, 1, 0], atol=1e-12)
    assert plane[1][1] > 0  # towards the head
    assert "cut_plane" not in b[("017", "000")].meta


def test_nphm_neutral_choice(nphm):
    assert NPHMFolder(nphm).expressions("018") == ["000", "001"]  # lowest index by default
    flags = {k: m.is_neutral for k, m in NPHMFolder(nphm, neutrals={18: 1}).items() if k[0] == "018"}
    assert flags == {("018", "001"): True, ("018", "000"): False}
    (nphm / "neutrals.json").write_text(json.dumps({"17": 3}))
    loader = NPHMFolder(nphm)
    assert loader.expressions("017") == ["003", "000"] and loader[("017", "003")].is_neutral
    assert not loader[("017", "000")].is_neutral
    with pytest.raises(ValueError, match="neutral expression 7 of subject 018"):
        NPHMFolder(nphm, neutrals={"018": 7})
    with pytest.raises(ValueError, match="must be an int or a digit string"):
        NPHMFolder(nphm, neutrals={"x": 1})
    (nphm / "neutrals.json").write_text("{broken")
    with pytest.raises(ValueError, match="cannot read .*neutrals.json"):
        NPHMFolder(nphm)


def test_missing_and_empty_roots(tmp_path):
    with pytest.raises(FileNotFoundError, match="MeshFolder root is not a folder: .*nowhere"):
        MeshFolder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="NPHMFolder root is not a folder"):
        NPHMFolder(tmp_path / "nowhere")
    (tmp_path / "empty" / "x").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no meshes in the MeshFolder layout; expected <root>/<identity>/"):
        MeshFolder(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"expected <root>/<subject:03d>/<expression:03d>/scan.ply"):
        NPHMFolder(tmp_path / "empty")


def test_missing_neutral_and_ambiguous_files(folder):
    os.rename(folder / "b" / "neutral.ply", folder / "b" / "rest.ply")
    with pytest.raises(ValueError, match="identity 'b' has no neutral mesh neutral.ply"):
        MeshFolder(folder)
    os.rename(folder / "a" / "neutral.ply", folder / "a" / "rest.ply")
    assert MeshFolder(folder, neutral="rest").expressions("b") == ["rest", "frown"]
    write(str(folder / "b" / "frown.obj"), *box())
    with pytest.raises(ValueError, match="two meshes for expression 'frown'"):
        MeshFolder(folder, neutral="rest")


def test_corrupt_files_are_named(folder, nphm):
    (folder / "a" / "smile.obj").write_text("this is not a mesh\n")
    with pytest.raises(ValueError, match=r"smile.obj holds no triangles"):
        MeshFolder(folder)[("a", "smile")]
    (nphm / "018" / "001" / "scan.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\n"
                                                    b"property float x\nend_header\n1 2")
    with pytest.raises(ValueError, match=r"cannot read mesh file .*018.001.scan.ply"):
        NPHMFolder(nphm)[("018", "001")]
    with pytest.raises(FileNotFoundError, match="no such mesh file"):
        read_mesh(folder / "missing.ply")


def test_mask_errors(folder, nphm):
    np.save(folder / "a" / "smile.face.npy", np.ones(5, bool))
    with pytest.raises(ValueError, match=r"smile.face.npy has shape \(5,\), but its mesh has 162 vertices"):
        MeshFolder(folder)[("a", "smile")]
    np.save(folder / "a" / "smile.face.npy", np.full(162, 2))
    with pytest.raises(ValueError, match="must be bool"):
        MeshFolder(folder)[("a", "smile")]
    np.save(folder / "a" / "smile.face.npy", SMILE_MASK.astype(np.uint8))  # 0/1 is accepted
    np.testing.assert_array_equal(MeshFolder(folder)[("a", "smile")].face_region, SMILE_MASK)
    np.save(nphm / "017" / "003" / "face_region.npy", np.ones(3, bool))
    with pytest.raises(ValueError, match=r"face_region.npy has shape \(3,\)"):
        NPHMFolder(nphm)[("017", "003")]


def test_non_watertight_meshes_warn(folder):
    v, f = sphere(2)
    write(str(folder / "a" / "neutral.ply"), v, f[1:])
    with pytest.warns(UserWarning, match=r"neutral.ply is not watertight"):
        mesh = MeshFolder(folder)[("a", "neutral")]
    assert len(mesh.faces) == len(f) - 1


def test_default_face_region_rule():
    pts = np.array([[0, 0, 0.9],        # face
                    [0, 0.25, 0.8],     # forehead
                    [0.9, 0.0, 0.0],    # ear (90 deg from +z)
                    [-0.9, 0.1, -0.1],  # ear, slightly behind
                    [0, 0, -0.9],       # back of the head
                    [0.3, 0.5, -0.6],   # back, upper
                    [0, -0.7, 0.3],     # neck
                    [0, 0.6, 0.5],      # scalp above the hairline
                    [0, 0.9, 0.1]])     # crown (90 deg from +z: within the cap)
    np.testing.assert_array_equal(default_face_region(pts), [1, 1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(default_face_region(pts, top_y=1.0), [1, 1, 1, 1, 0, 0, 0, 1, 1])
    assert default_face_region(np.zeros((1, 3)))[0]  # the centre counts as front
    with pytest.raises(ValueError, match=r"vertices must be \[V, 3\]"):
        default_face_region(np.zeros((3, 2)))


def test_default_face_region_matches_known_regions():
    """On the procedural heads, whose face region is known, the rule finds it (IoU ~0.79;
    without the crown cut it labelled the top of the head as face: ~0.54)."""
    from npht.data.synthetic import synthetic_head

    ious = []
    for i in range(3):
        mesh = synthetic_head(i).mesh(resolution=64)
        truth, rule = mesh.face_region.astype(bool), default_face_region(mesh.vertices)
        ious.append((truth & rule).sum() / (truth | rule).sum())
    assert min(ious) > 0.72, ious


def test_cut_plane_helpers():
    v, _ = fake_flame(cut_y=-0.2)
    origin, normal = flame_cut_plane(v)
    np.testing.assert_allclose(normal, [0, 1, 0], atol=1e-12)
    pts = np.array([[0, -0.1, 0], [0, -0.3, 0], [0.5, 0.2, 0.1]])
    np.testing.assert_array_equal(above_plane(pts, (origin, normal)), [True, False, True])
    np.testing.assert_array_equal(keep_above_plane(pts, (origin, normal)), pts[[0, 2]])
    flipped = v.copy()
    flipped[:, 1] = -0.4 - flipped[:, 1]  # mirror the head below the plane: the normal follows it
    assert flame_cut_plane(flipped)[1][1] < 0
    with pytest.raises(ValueError, match="a FLAME mesh"):
        flame_cut_plane(v[:100])


def test_nphm_cut_plane_reaches_the_sampler(nphm):
    from npht.data.sampling import prepare_identity_samples

    mesh = NPHMFolder(nphm)[("017", "003")]  # flame.ply: cut at y = -0.4, head above
    bulk = prepare_identity_samples(mesh, 200, 100, 100, rng=0)
    for k in ("surface_face_points", "surface_nonface_points", "ball_points"):
        assert (bulk[k][:, 1] > -0.4).all() and len(bulk[k]) in (200, 100)


def test_obj_keeps_the_file_vertices(tmp_path):
    """A textured .obj (a UV per face corner, seams), with groups and materials, quads and
    negative indices loads with the file's vertices in its order: the closed head stays
    watertight and a mask in the file's vertex order applies (trimesh split the vertices)."""
    from npht.data.sampling import is_watertight

    v, f = box()  # 8 vertices, 12 triangles: written as 6 quads where the pairs allow
    quads = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
    lines = ["mtllib none.mtl", "o head"] + [f"v {a:.6f} {b:.6f} {c:.6f}" for a, b, c in v]
    lines += [f"vt {k / 24:.4f} {(k * 7 % 24) / 24:.4f}" for k in range(24)] + ["vn 0 0 1"]
    for k, q in enumerate(quads):
        lines += [f"g part{k % 2}", f"usemtl m{k % 2}"]
        if k == 5:  # negative indices, counted back from the 8 vertices read
            lines.append("f " + " ".join(f"{i - 8}/{-24 + 4 * k + j}" for j, i in enumerate(q)))
        else:
            lines.append("f " + " ".join(f"{i + 1}/{4 * k + j + 1}/1" for j, i in enumerate(q)))
    path = tmp_path / "a" / "neutral.obj"
    path.parent.mkdir()
    path.write_text("\n".join(lines) + "\n")
    rv, rf = read_mesh(path)
    np.testing.assert_allclose(rv, v, atol=1e-6)
    assert rf.shape == (12, 3) and is_watertight(rf)
    np.testing.assert_array_equal(rf[:2], [[0, 1, 3], [0, 3, 2]])  # fan of the first quad
    assert trimesh.Trimesh(rv, rf, process=False).is_volume  # consistently wound, outward
    mask = v[:, 2] > 0
    np.save(tmp_path / "a" / "neutral.face.npy", mask)
    np.testing.assert_array_equal(MeshFolder(tmp_path)[("a", "neutral")].face_region, mask)
