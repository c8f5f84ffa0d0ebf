"""How a cloud meets the image (frames.assemble_frame): decided from frame ids and configuration, never guessed."""
import numpy as np
import pytest
from std_msgs.msg import Header

from cmdr_ros.geometry import make_transform
from cmdr_ros.judge import NotJudgeable
from cmdr_ros.ros.conversions import array_to_image, xyz_to_pointcloud2
from cmdr_ros.ros.node.frame_judge import FrameJudge
from cmdr_ros.ros.conversions.frames import assemble_frame
from node_harness import cell_camera_info, cell_frame

IDENTITY = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]


@pytest.fixture(scope="module")
def part():
    return cell_frame(42)


def msgs(part, cloud_frame: str, image_frame: str = "camera", organized: bool = True):
    image = array_to_image(part.rgb, "rgb8", Header(frame_id=image_frame))
    xyz = part.xyz if organized else part.xyz.reshape(-1, 3)[part.xyz.reshape(-1, 3)[:, 2] > 0]
    cloud = xyz_to_pointcloud2(xyz.astype(np.float32), Header(frame_id=cloud_frame))
    info = cell_camera_info()
    info.header.frame_id = image_frame
    return image, cloud, info


def test_identical_frames_are_pixel_aligned(part):
    image, cloud, info = msgs(part, "camera")
    f = assemble_frame("rgbd", image, cloud, info)
    assert (f.alignment, f.transform) == ("aligned", "identical_frames")
    np.testing.assert_array_equal(f.xyz, part.xyz)


def test_another_frame_without_tf_or_extrinsics_is_not_judged(part):
    for organized in (True, False):
        image, cloud, info = msgs(part, "sensor_3d", organized=organized)
        with pytest.raises(NotJudgeable, match="sensor_3d.*extrinsics") as e:
            assemble_frame("rgbd", image, cloud, info)
        assert e.value.kind == "no_transform"
    image, cloud, info = msgs(part, "sensor_3d")  # a lookup that finds nothing is no transform either
    with pytest.raises(NotJudgeable, match="tf2 has no transform"):
        assemble_frame("rgbd", image, cloud, info, transform=lambda target, source, stamp: None)
    image, cloud, info = msgs(part, "")  # an empty frame id is not the image's frame
    with pytest.raises(NotJudgeable):
        assemble_frame("rgbd", image, cloud, info)


def test_registered_cloud_is_aligned_whatever_its_frame(part):
    image, cloud, info = msgs(part, "camera_depth_optical_frame")
    f = assemble_frame("rgbd", image, cloud, info, registered=True)
    assert (f.alignment, f.transform) == ("aligned", "registered")


def test_tf_comes_before_the_parameter_and_the_parameter_only_when_set(part):
    image, cloud, info = msgs(part, "sensor_3d")
    asked = []

    def lookup(target, source, stamp):
        asked.append((target, source))
        return np.eye(4)

    f = assemble_frame("rgbd", image, cloud, info, transform=lookup, extrinsics=np.eye(4))
    assert (f.alignment, f.transform) == ("projected", "tf") and asked == [("camera", "sensor_3d")]
    f = assemble_frame("rgbd", image, cloud, info, transform=lambda *a: None, extrinsics=np.eye(4))
    assert (f.alignment, f.transform) == ("projected", "parameter")
    # the projected identity reproduces the organized map where the points land
    assert f.coverage == pytest.approx(float((part.xyz[..., 2] > 0).mean()), abs=0.02)


def test_frame_judge_from_params_uses_extrinsics_only_when_given(part):
    image, cloud, info = msgs(part, "sensor_3d")
    unset = FrameJudge.aligner("rgbd", {})
    assert unset.extrinsics is None
    with pytest.raises(NotJudgeable):
        unset.assemble({"image": image, "points": cloud}, info)
    T = make_transform([0, 0, 0], [0, 0, 0, 1])
    given = FrameJudge.aligner("rgbd", {"extrinsics": IDENTITY})
    np.testing.assert_allclose(given.extrinsics, T)
    assert given.assemble({"image": image, "points": cloud}, info).transform == "parameter"
    assert FrameJudge.aligner("rgbd", {"cloud_registered": True}).assemble(
        {"image": image, "points": cloud}, info).transform == "registered"


def test_whole_numbers_are_taken_for_float_parameters():
    from cmdr_ros.ros.node.parameters import check, coerce, node_params

    assert coerce("threshold", 3) == 3.0 and type(coerce("threshold", 3)) is float
    assert coerce("extrinsics", [0, 0, 0, 0, 0, 0, 1]) == IDENTITY
    assert coerce("worker.queue_size", 3) == 3 and coerce("autostart", True) is True
    assert check("extrinsics", None) is None
    p = node_params({"threshold": 3, "extrinsics": [0, 0, 0, 0, 0, 0, 1]})
    assert p["threshold"] == 3.0 and p["extrinsics"] == IDENTITY
    assert node_params()["extrinsics"] is None


def test_projection_parameter_chooses_k_and_d_or_p():
    """raw: K + distortion D (an image_raw); rectified: P without distortion (an image_rect); auto: P when D is zero."""
    from cmdr_ros.ros.conversions.frames import camera_model

    info = cell_camera_info()
    k = np.array(info.k).reshape(3, 3)
    info.d = [0.1, -0.05, 0.0, 0.0, 0.0]
    p = np.hstack([k, np.zeros((3, 1))])
    p[0, 2] += 3.0  # the rectified image's principal point differs
    info.p = p.ravel().tolist()
    point = np.array([[0.02, -0.01, 0.3]])
    from cmdr_ros.geometry import project_points

    raw, rect, auto = (camera_model(info, m) for m in ("raw", "rectified", "auto"))
    assert not raw.rectified and rect.rectified and not auto.rectified
    u_rect = project_points(point, rect)[0]
    expect = p[:, :3] @ point[0]
    np.testing.assert_allclose(u_rect, expect[:2] / expect[2], atol=1e-9)
    u_raw = project_points(point, raw)[0]
    import cv2

    ref, _ = cv2.projectPoints(point.reshape(1, 1, 3), np.zeros(3), np.zeros(3), k, np.array(info.d))
    np.testing.assert_allclose(u_raw, ref.reshape(2), atol=1e-9)
    info.d = [0.0] * 5  # no distortion: auto takes P, raw still K
    np.testing.assert_allclose(project_points(point, camera_model(info, "auto"))[0], u_rect, atol=1e-9)
    k_only = k @ point[0]
    np.testing.assert_allclose(project_points(point, camera_model(info, "raw"))[0], k_only[:2] / k_only[2], atol=1e-9)
