"""Provenance from what real generators write: files built the way each tool saves them."""

from __future__ import annotations

import io
import json
import time

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from miragedet.provenance.metadata import ai_tool_in
from miragedet.provenance.parameters import parse_a1111, user_comment
from miragedet.provenance.verdict import read_provenance

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
A1111 = (
    "a lighthouse at dusk, oil painting\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1234567, Size: 832x1216, "
    'Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Lora hashes: "detail: 0a1b2c", '
    "Version: v1.10.1"
)
# ComfyUI's API graph as its SaveImage node writes it (json.dumps of {id: {inputs, class_type}})
COMFY_PROMPT = {
    "4": {
        "inputs": {"ckpt_name": "flux1-dev-fp8.safetensors"},
        "class_type": "CheckpointLoaderSimple",
    },
    "10": {
        "inputs": {"lora_name": "film-grain.safetensors", "strength_model": 0.8},
        "class_type": "LoraLoader",
    },
    "3": {
        "inputs": {
            "seed": 42,
            "steps": 20,
            "cfg": 1.0,
            "sampler_name": "euler",
            "model": ["10", 0],
        },
        "class_type": "KSampler",
    },
    "9": {"inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}, "class_type": "SaveImage"},
}
COMFY_WORKFLOW = {"last_node_id": 9, "nodes": [{"id": 4, "type": "CheckpointLoaderSimple"}]}


def _image() -> Image.Image:
    return Image.new("RGB", (48, 32), (90, 120, 150))


def _png(info: PngInfo | None = None) -> bytes:
    buf = io.BytesIO()
    _image().save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def _save(fmt: str, exif: Image.Exif) -> bytes:
    buf = io.BytesIO()
    _image().save(buf, fmt, exif=exif)
    return buf.getvalue()


def test_a1111_png_parameters_name_the_model_and_settings():
    info = PngInfo()
    info.add_text("parameters", A1111)
    result = read_provenance(_png(info))
    assert result["declares_ai"]
    [signal] = result["parameters"]
    assert signal["tool"] == "AUTOMATIC1111/Forge" and signal["generator"] == "sd_xl_base_1.0"
    assert (
        signal["details"]["Seed"] == "1234567" and signal["details"]["Sampler"] == "DPM++ 2M Karras"
    )
    assert signal["details"]["prompt"] == "a lighthouse at dusk, oil painting"
    assert result["summary"].startswith(
        "generator parameters from AUTOMATIC1111/Forge: sd_xl_base_1.0"
    )
    assert "{" not in result["summary"] and "Negative" not in result["summary"]


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_a1111_exif_user_comment_on_jpeg_and_webp(fmt):
    exif = Image.Exif()
    # as A1111 writes it with piexif.helper.UserComment.dump(text, encoding="unicode")
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + A1111.encode("utf-16-be")
    result = read_provenance(_save(fmt, exif))
    assert [s["tool"] for s in result["parameters"]] == ["AUTOMATIC1111/Forge"]
    assert result["parameters"][0]["generator"] == "sd_xl_base_1.0" and result["declares_ai"]


def test_comfyui_png_chunks_and_webp_exif_name_the_checkpoint_without_dumping_json():
    info = PngInfo()
    info.add_text("prompt", json.dumps(COMFY_PROMPT))
    info.add_text("workflow", json.dumps(COMFY_WORKFLOW))
    exif = Image.Exif()  # ComfyUI's animated-WebP form: Model = prompt, Make = workflow
    exif[0x0110] = "prompt:" + json.dumps(COMFY_PROMPT)
    exif[0x010F] = "workflow:" + json.dumps(COMFY_WORKFLOW)
    for data in (_png(info), _save("WEBP", exif)):
        result = read_provenance(data)
        [signal] = result["parameters"]
        assert signal["tool"] == "ComfyUI"
        assert signal["generator"] == "flux1-dev-fp8.safetensors, film-grain.safetensors (LoRA)"
        assert signal["details"] == {"sampler": "euler", "steps": 20, "seed": 42}
        assert result["declares_ai"] and "{" not in result["summary"]
        assert result["summary"].startswith("generator parameters from ComfyUI: flux1-dev-fp8")
        assert "make" not in result["exif"] and "model" not in result["exif"]  # not shown raw


@pytest.mark.parametrize(
    "software, tool",
    [
        ("Imagenomic Portraiture 3", None),
        ("Influx Studio", None),
        ("Adobe Photoshop 25.0 (Macintosh)", None),
        ("Adobe Firefly", "Firefly"),
        ("FLUX.1 [dev]", "FLUX"),
        ("Made with Midjourney", "Midjourney"),
    ],
)
def test_generative_tool_words_match_whole_words_only(software, tool):
    assert ai_tool_in(software) == tool
    exif = Image.Exif()
    exif[0x0131] = software
    assert read_provenance(_save("JPEG", exif))["declares_ai"] is (tool is not None)


@pytest.mark.parametrize(
    "term, declares, claim",
    [
        ("trainedAlgorithmicMedia", True, "generative AI"),
        ("compositeWithTrainedAlgorithmicMedia", True, "contains generative AI"),
        ("algorithmicMedia", False, "synthetic, not generative AI"),
        ("digitalCapture", False, "camera capture"),
    ],
)
def test_c2pa_source_types_follow_the_iptc_vocabulary(term, declares, claim):
    pytest.importorskip("c2pa")
    from signing import sign_jpeg

    buf = io.BytesIO()
    _image().save(buf, "JPEG")
    result = read_provenance(sign_jpeg(buf.getvalue(), source_type=IPTC + term))
    assert result["c2pa"]["declares_ai"] is declares and result["declares_ai"] is declares
    assert result["c2pa"]["source_claims"] == [claim]
    if not declares:
        assert claim in result["summary"] and "AI generation" not in result["summary"]


def test_stripped_copies_and_hostile_metadata_give_no_claim_and_no_hang():
    stripped = _png()
    assert read_provenance(stripped)["parameters"] == []
    hostile = PngInfo()
    hostile.add_text("parameters", "Steps: 1, " + "x" * 10_000_000)  # 10 MB text chunk
    hostile.add_text("prompt", '{"4": {"inputs": ')  # truncated JSON
    hostile.add_itxt("workflow", "[1, 2")
    start = time.process_time()
    result = read_provenance(_png(hostile))
    assert time.process_time() - start < 30  # CPU seconds: a bound on work, generous for any CPU
    assert result["parameters"] == [] and not result["declares_ai"]
    assert parse_a1111("just a caption") is None
    # EXIF UserComment bytes that are not valid UTF-16 still decode to text, never raise
    assert isinstance(user_comment(b"UNICODE\0\xd8\x00\xd8"), str)
    exif = Image.Exif()
    exif[0x0110] = "prompt:{not json"
    exif[0x010F] = "workflow:" + "[" * 100_000  # nesting bomb
    result = read_provenance(_save("WEBP", exif))
    assert result["parameters"] == [] and "{" not in result["summary"]


def _xmp(term: str, tool: str = "Some Editor 2.0") -> str:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
        'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
        'xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
        f'xmp:CreatorTool="{tool}"><Iptc4xmpExt:DigitalSourceType>{IPTC}{term}'
        "</Iptc4xmpExt:DigitalSourceType></rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    )


def _with_xmp(fmt: str, packet: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "PNG":
        info = PngInfo()
        info.add_itxt("XML:com.adobe.xmp", packet)
        _image().save(buf, "PNG", pnginfo=info)
    else:
        _image().save(buf, fmt, xmp=packet.encode())
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "HEIF"])
@pytest.mark.parametrize(
    "term, declares",
    [
        ("trainedAlgorithmicMedia", True),
        ("compositeWithTrainedAlgorithmicMedia", True),
        ("algorithmicMedia", False),
        ("digitalCapture", False),
    ],
)
def test_xmp_digital_source_type_in_every_container(fmt, term, declares):
    if fmt == "HEIF":
        pytest.importorskip("pillow_heif")
    result = read_provenance(_with_xmp(fmt, _xmp(term)))
    assert result["xmp"]["digital_source_type"] == IPTC + term
    assert result["xmp"]["declares_ai"] is declares and result["declares_ai"] is declares
    assert result["xmp"]["creator_tool"] == "Some Editor 2.0"


def test_xmp_entity_expansion_is_refused_and_the_pixels_still_score(served_checkpoint):
    from miragedet.inference.detector import Detector

    bomb = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
        + "]>"
        + _xmp("trainedAlgorithmicMedia").replace("Some Editor 2.0", "&lol9;")
    ).replace('<!ENTITY lol1 "&lol0;', '<!ENTITY lol1 "&lol;')
    data = _with_xmp("JPEG", bomb)
    result = read_provenance(data)
    assert result["xmp"]["error"].startswith("XMP refused") and not result["declares_ai"]
    [prediction] = Detector.from_pretrained(served_checkpoint).score([data], provenance=True)
    assert prediction.fake_prob is not None and prediction.basis == "pixels"


def test_declared_metadata_decides_the_verdict_and_says_why(served_checkpoint, tmp_path):
    from miragedet.inference.detector import Detector

    info = PngInfo()
    info.add_text("parameters", A1111)
    files = {
        "a1111.png": _png(info),
        "xmp.jpg": _with_xmp("JPEG", _xmp("trainedAlgorithmicMedia")),
        "algorithmic.jpg": _with_xmp("JPEG", _xmp("algorithmicMedia")),
        "stripped.png": _png(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    detector = Detector.from_pretrained(served_checkpoint, threshold=0.999)  # pixels: all "real"
    got = {
        p.source.rsplit("/", 1)[-1]: p
        for p in detector.score(sorted(str(p) for p in tmp_path.iterdir()))  # read by default
    }
    assert {n: (p.label, p.verdict, p.basis) for n, p in got.items()} == {
        "a1111.png": ("real", "fake", "declared (parameters)"),
        "xmp.jpg": ("real", "fake", "declared (xmp)"),
        "algorithmic.jpg": ("real", "real", "pixels"),
        "stripped.png": ("real", "real", "pixels"),
    }
    # without provenance the verdict is the pixels' label
    [plain] = detector.score([str(tmp_path / "a1111.png")], provenance=False)
    assert (plain.verdict, plain.basis) == ("real", "pixels")


def _jpeg(color=(90, 120, 150)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 32), color).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_c2pa_edit_of_an_ai_image_keeps_the_claim_through_its_ingredient():
    pytest.importorskip("c2pa")
    from signing import sign_jpeg

    original = sign_jpeg(_jpeg(), source_type=IPTC + "trainedAlgorithmicMedia")
    edited = sign_jpeg(_jpeg((60, 60, 60)), ingredient=original, generator="Photo Editor")
    result = read_provenance(edited)
    assert result["c2pa"]["digital_source_types"] == []  # the edit itself claims nothing
    assert result["c2pa"]["ingredients_declaring_ai"] == ["original.jpg"]
    assert result["declares_ai"] and "ingredient declaring AI generation" in result["summary"]
    # an edit of a camera capture does not
    capture = sign_jpeg(_jpeg(), source_type=IPTC + "digitalCapture")
    assert not read_provenance(sign_jpeg(_jpeg(), ingredient=capture))["declares_ai"]


def test_a_trusted_capture_claim_overrules_the_pixels_and_an_untrusted_one_does_not(
    served_checkpoint, tmp_path
):
    pytest.importorskip("c2pa")
    from miragedet.inference.detector import Detector
    from miragedet.provenance.c2pa_manifest import load_trust_anchors
    from signing import root_of, sign_jpeg, throwaway_chain

    chain = throwaway_chain()
    photo = sign_jpeg(_jpeg(), source_type=IPTC + "digitalCapture", chain=chain)
    detector = Detector.from_pretrained(served_checkpoint, threshold=0.0)  # pixels: all "fake"
    [untrusted] = detector.score([photo], provenance=True)
    assert untrusted.provenance["c2pa"]["validation_state"] == "Valid"
    assert (untrusted.label, untrusted.verdict, untrusted.basis) == ("fake", "fake", "pixels")
    (tmp_path / "trust.pem").write_bytes(root_of(chain[0]))
    detector.trust_anchors = load_trust_anchors(tmp_path / "trust.pem")
    [trusted] = detector.score([photo], provenance=True)
    assert trusted.provenance["c2pa"]["validation_state"] == "Trusted"
    assert (trusted.label, trusted.verdict) == ("fake", "real")
    assert trusted.basis == "declared (c2pa capture, trusted signer)"
    # another signer's capture claim is not on the list: the pixels decide
    other = sign_jpeg(_jpeg(), source_type=IPTC + "digitalCapture")
    [stranger] = detector.score([other], provenance=True)
    assert (stranger.verdict, stranger.basis) == ("fake", "pixels")
    with pytest.raises(ValueError, match="no PEM certificate"):
        (tmp_path / "empty.pem").write_text("nothing")
        load_trust_anchors(tmp_path / "empty.pem")


def test_a_damaged_c2pa_manifest_is_a_signal_error_and_the_pixels_still_score(served_checkpoint):
    pytest.importorskip("c2pa")
    from miragedet.inference.detector import Detector
    from signing import sign_jpeg

    signed = bytearray(sign_jpeg(_jpeg()))
    at = signed.find(b"jumb")
    signed[at + 40 : at + 240] = b"\x00" * 200  # inside the manifest store (JUMBF boxes)
    [prediction] = Detector.from_pretrained(served_checkpoint).score(
        [bytes(signed)], provenance=True
    )
    assert prediction.fake_prob is not None
    c2pa_info = prediction.provenance["c2pa"]
    assert c2pa_info.get("error") or c2pa_info.get("validation_state") != "Valid"
    assert prediction.basis == "pixels"


def _sdxl_marked(order: str = "rgb") -> Image.Image:
    """A 1024 x 1024 image (SDXL's native size) watermarked as SDXL pipelines do: the
    invisible-watermark encoder with the 48-bit message, dwtDct, on the RGB array (diffusers) or
    a BGR one (Stability's scripts). At 512 px JPEG 90 left 81% of the bits: under the bar."""
    import numpy as np
    from imwatermark import WatermarkEncoder

    from miragedet.provenance.watermark import SDXL_BITS

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((1024, 1024), Image.Resampling.BICUBIC))
    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", SDXL_BITS)
    array = base if order == "rgb" else base[:, :, ::-1]
    marked = encoder.encode(np.ascontiguousarray(array), "dwtDct")
    return Image.fromarray(marked if order == "rgb" else marked[:, :, ::-1]), Image.fromarray(base)


@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_sdxl_invisible_watermark_is_found_and_survives_jpeg_90(order, served_checkpoint):
    pytest.importorskip("imwatermark")
    from miragedet.inference.detector import Detector

    marked, clean = _sdxl_marked(order)
    png = io.BytesIO()
    marked.save(png, "PNG")
    jpeg = io.BytesIO()
    marked.save(jpeg, "JPEG", quality=90)
    plain = io.BytesIO()
    clean.save(plain, "PNG")
    detector = Detector.from_pretrained(served_checkpoint, threshold=0.999)  # pixels: "real"
    detector.watermarks = True
    got = detector.score([png.getvalue(), jpeg.getvalue(), plain.getvalue()], provenance=True)
    for p in got[:2]:
        assert p.provenance["watermark"]["generator"] == "Stable Diffusion XL"
        assert p.provenance["watermark"]["bit_match"] >= 0.92
        assert (p.verdict, p.basis) == ("fake", "declared (watermark)")
        assert p.provenance["summary"].startswith("invisible watermark of Stable Diffusion XL")
    assert got[2].provenance["watermark"]["found"] is False
    assert got[2].provenance["watermark"]["bit_match"] < 0.92
    assert (got[2].verdict, got[2].basis) == ("real", "pixels")
    # off by default; small images are not applicable
    assert "watermark" not in read_provenance(png.getvalue())
    small = read_provenance(_png(), watermarks=True)["watermark"]
    assert small == {"checked": False, "reason": "image smaller than 256 x 256: not applicable"}


def test_evaluate_counts_what_metadata_decides_per_subset(served_checkpoint, tmp_path):
    from miragedet import load_pretrained
    from miragedet.evaluation.evaluate import evaluate_dataset

    info = PngInfo()
    info.add_text("parameters", A1111)
    for cls, count in (("real", 6), ("fake", 6)):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(count):
            buf = io.BytesIO()
            tagged = cls == "fake" and i < 4  # 4 of the 6 fakes keep their generator's metadata
            Image.new("RGB", (32, 32), (10 * i, 90, 40)).save(
                buf, "PNG", pnginfo=info if tagged else None
            )
            (tmp_path / "data" / cls / f"{i}.png").write_bytes(buf.getvalue())
    model = load_pretrained(served_checkpoint)
    metrics = evaluate_dataset(
        model, tmp_path / "data", tmp_path / "eval", workers=0, threshold=1.0
    )
    meta = metrics["metadata"]["all"]
    assert (meta["n"], meta["decided"], meta["decided_fake"]) == (12, 4, 4)
    assert meta["accuracy_pixels"] == 0.5  # threshold 1.0: the pixels call everything real
    assert meta["accuracy_combined"] == 10 / 12


def _png_text(**chunks: str) -> bytes:
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    return _png(info)


@pytest.mark.parametrize(
    "chunks, tool, generator, details",
    [
        (  # Fooocus: JSON parameters + fooocus_scheme, as modules/private_logger.py saves them
            {
                "parameters": json.dumps(
                    {"prompt": "a cat", "base_model": "juggernautXL_v8Rundiffusion.safetensors",
                     "seed": 7, "sampler": "dpmpp_2m_sde_gpu", "steps": 30,
                     "version": "Fooocus v2.5.5"}
                ),
                "fooocus_scheme": "fooocus",
            },
            "Fooocus", "juggernautXL_v8Rundiffusion.safetensors",
            {"sampler": "dpmpp_2m_sde_gpu", "steps": 30, "seed": 7},
        ),
        (  # SwarmUI
            {"parameters": json.dumps({"sui_image_params": {
                "prompt": "a cat", "model": "Flux/flux1-dev-fp8", "seed": 123998, "steps": 25,
                "sampler": "euler", "swarm_version": "0.9.1.1"}})},
            "SwarmUI", "Flux/flux1-dev-fp8", {"sampler": "euler", "steps": 25, "seed": 123998},
        ),
        (  # InvokeAI
            {
                "invokeai_metadata": json.dumps({"positive_prompt": "a cat", "seed": 5,
                    "steps": 30, "scheduler": "euler", "model": {"name": "juggernaut-xl",
                    "hash": "blake3:abc"}}),
                "invokeai_graph": "{}",
            },
            "InvokeAI", "juggernaut-xl", {"scheduler": "euler", "steps": 30, "seed": 5},
        ),
        (  # NovelAI
            {
                "Software": "NovelAI",
                "Source": "NovelAI Diffusion V4.5 4BDE2A90",
                "Description": "a cat",
                "Comment": json.dumps({"prompt": "a cat", "steps": 28, "scale": 5,
                    "seed": 99, "sampler": "k_euler_ancestral", "uc": "lowres"}),
            },
            "NovelAI", "NovelAI Diffusion V4.5 4BDE2A90",
            {"sampler": "k_euler_ancestral", "steps": 28, "seed": 99},
        ),
        (  # Midjourney web download
            {
                "Description": "a cat on a roof --ar 2:1 --v 6.1 Job ID: "
                "a7421d2f-b262-44f9-977c-ac23e9c7d3e3",
                "Author": "someone",
            },
            "Midjourney", "Midjourney v 6.1",
            {"job id": "a7421d2f-b262-44f9-977c-ac23e9c7d3e3", "author": "someone"},
        ),
    ],
    ids=["fooocus", "swarmui", "invokeai", "novelai", "midjourney"],
)  # fmt: skip
def test_more_generators_are_named_with_their_model(chunks, tool, generator, details):
    result = read_provenance(_png_text(**chunks))
    [signal] = result["parameters"]
    assert (signal["tool"], signal["generator"], signal["details"]) == (tool, generator, details)
    assert result["declares_ai"] and "{" not in result["summary"]
    [unified] = result["signals"]
    assert unified["source"] == "parameters" and unified["declares_ai"]
    assert unified["generator"] == f"{tool}: {generator}" and unified["verified"] is False


def test_signals_list_every_source_in_one_shape():
    pytest.importorskip("c2pa")
    from signing import sign_jpeg

    signed = read_provenance(sign_jpeg(_jpeg()))
    [c2pa_signal] = signed["signals"]
    assert c2pa_signal["source"] == "c2pa" and c2pa_signal["claim"] == "generative AI"
    assert c2pa_signal["verified"] is True and c2pa_signal["generator"] == "test-generator 1.0"
    assert c2pa_signal["details"] == {"software agents": ["test-generator 1.0"]}
    assert signed["c2pa"]["actions"] == ["c2pa.created"]
    assert read_provenance(_png())["signals"] == []
    # a caption that merely mentions a job is not Midjourney's Description
    assert read_provenance(_png_text(Description="Job ID: none here"))["parameters"] == []


def test_comfyui_workflow_alone_still_names_the_checkpoint():
    workflow = {
        "last_node_id": 4,
        "nodes": [
            {
                "id": 4,
                "type": "CheckpointLoaderSimple",
                "widgets_values": ["sdxl_lightning.safetensors"],
            },
            {"id": 5, "type": "EmptyLatentImage", "widgets_values": [1024, 1024, 1]},
        ],
    }
    result = read_provenance(_png_text(workflow=json.dumps(workflow)))
    [signal] = result["parameters"]
    assert (signal["tool"], signal["generator"]) == ("ComfyUI", "sdxl_lightning.safetensors")
