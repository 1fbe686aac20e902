"""Every registered model gives a non-constant CAM of the input's size for a real cell."""

import numpy as np
import pytest
import torch

from bloodviz.data import get_dataset
from bloodviz.explain import CAM_METHODS, Explainer
from bloodviz.models import create_model, list_models, model_info


@pytest.fixture(scope="module")
def cell(data_root):
    ds = get_dataset("pbc", 64, data_root)
    return ds, ds.preprocessing().prepare(ds.open_image(ds.sample_ids("test")[0]))


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_model_gives_a_non_constant_cam(name, cell):
    ds, image = cell
    torch.manual_seed(0)
    model = create_model(name, num_classes=8, in_size=64)
    if model_info(name).trainer == "svm":
        # the SVM head's log-probabilities are what Grad-CAM differentiates: fit one (on
        # random features; the map only has to depend on the image) in the classifier's place
        from bloodviz.models.svm_head import SVMHead
        from bloodviz.svm import make_svm

        rng = np.random.default_rng(0)
        features = rng.normal(size=(80, model.num_features))
        model.fc = SVMHead.from_fitted(make_svm().fit(features, np.repeat(np.arange(8), 10)))
    explainer = Explainer(model, name, ds.preprocessing())
    # an untrained net's Grad-CAM can be all-negative (hence zero) for one class by chance;
    # a target layer pooled to 1x1 gives a constant map for every class
    spreads = []
    for target in range(8):
        result = explainer.explain(image, "gradcam", target=target)
        assert result.cam.shape == (64, 64)
        assert result.overlay.shape == (64, 64, 3) and result.overlay.dtype == np.uint8
        spreads.append(float(result.cam.std()))
        if spreads[-1] > 1e-3:
            break
    assert max(spreads) > 1e-3, spreads


@pytest.mark.slow
def test_all_methods_and_faithfulness(cell):
    ds, image = cell
    torch.manual_seed(0)
    explainer = Explainer(create_model("cnn_baseline", 8, 64), "cnn_baseline", ds.preprocessing())
    for method in CAM_METHODS:
        result = explainer.explain(image, method, target=2)
        assert result.target == 2 and result.cam.shape == (64, 64), method
        assert np.isfinite(result.cam).all()
    scored = explainer.explain(image, "gradcam", faithfulness=True).faithfulness
    assert set(scored) >= {"road_morf", "road_lerf", "road_score"}
    with pytest.raises(ValueError, match="unknown CAM method"):
        explainer.explain(image, "saliencymagic")


@pytest.mark.parametrize("name", ["cnn_baseline", "resnet18", "timm:deit_tiny_patch16_224"])
def test_maps_match_the_library_used_plainly_and_skip_the_backward_before_the_layer(name, cell):
    """The backward pass starts at the target layer (weights frozen): the maps are the ones
    pytorch-grad-cam gives on an unfrozen copy, and no layer before the target builds a graph."""
    import copy

    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from bloodviz.explain import cam_reshape, resolve_target_layer

    ds, image = cell
    torch.manual_seed(0)
    model = create_model(name, num_classes=8, in_size=64).eval()
    plain = copy.deepcopy(model)
    explainer = Explainer(model, name, ds.preprocessing())
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    graph_before = []
    watch = first.register_forward_hook(lambda m, i, out: graph_before.append(out.requires_grad))
    tensor = ds.preprocessing().normalize(image)
    try:
        for method in ("gradcam", "hirescam", "layercam", "eigencam"):
            ours = explainer.explain(image, method, target=3).cam
            cam = CAM_METHODS[method][1](
                model=plain,
                target_layers=[resolve_target_layer(plain, name)],
                reshape_transform=cam_reshape(name),
            )
            with cam:
                theirs = cam(input_tensor=tensor, targets=[ClassifierOutputTarget(3)])[0]
            np.testing.assert_allclose(ours, theirs, atol=1e-5, err_msg=method)
    finally:
        watch.remove()
    assert graph_before and not any(graph_before)


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())


def test_no_hook_outlives_a_call_and_threads_share_an_explainer_safely(cell):
    """A CAM's hooks are released after each call (cached ones leaked about 1.4 MB a call in
    the app), and eight threads sharing one explainer, as Streamlit sessions share a cached
    one, get the same maps as one thread alone."""
    from concurrent.futures import ThreadPoolExecutor

    ds, image = cell
    torch.manual_seed(0)
    explainer = Explainer(create_model("cnn_baseline", 8, 64), "cnn_baseline", ds.preprocessing())
    before = _hooks(explainer.model)
    methods = ["gradcam", "hirescam", "gradcam++", "eigencam", "layercam", "xgradcam"]
    alone = {m: explainer.explain(image, m, target=1).cam for m in methods}
    assert _hooks(explainer.model) == before
    jobs = [methods[i % len(methods)] for i in range(48)]
    with ThreadPoolExecutor(8) as pool:
        shared = list(pool.map(lambda m: (m, explainer.explain(image, m, target=1).cam), jobs))
    for method, cam in shared:
        np.testing.assert_allclose(cam, alone[method], atol=1e-5)
    assert _hooks(explainer.model) == before
    # nor does a weight gradient (the model's size again, per cached explainer)
    assert all(p.grad is None for p in explainer.model.parameters())
