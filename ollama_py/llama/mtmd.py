"""ctypes binding of llama.cpp's multimodal library (tools/mtmd): a projector that turns images into
embeddings of a text model's width.

A `Projector` is made from an mmproj GGUF and the text model it serves. It
decodes image files into `Bitmap`s (stb_image, through mtmd's helper),
tokenizes a prompt holding one media marker per bitmap into text tokens and
`ImageChunk`s, encodes an image chunk and decodes its embeddings into a
llama context. Every C object is a Handle: freed once, children (bitmaps,
chunks) before the projector, the projector before its model.

Thread use: bitmaps and tokenizing may run on any thread (mtmd documents them
thread-safe); encoding and decoding change the projector's output buffer and
the context, so only the context's own thread calls `decode_image`.
"""

from __future__ import annotations

import ctypes
import functools
import secrets
from ctypes import (
    POINTER,
    c_bool,
    c_char_p,
    c_float,
    c_int,
    c_int32,
    c_int64,
    c_size_t,
    c_uint32,
    c_void_p,
)
from pathlib import Path
from typing import Any

from ollama_py.llama import capi, lib
from ollama_py.llama.context import Context
from ollama_py.llama.handle import Handle
from ollama_py.llama.lib import LlamaError
from ollama_py.llama.model import Model

CHUNK_TEXT, CHUNK_IMAGE, CHUNK_AUDIO = 0, 1, 2
# The image files stb_image reads. Anything else is refused before mtmd sees it: its helper would otherwise
# try the bytes as audio, then hand them to ffprobe as a video.
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


class mtmd_context_params(ctypes.Structure):
    _fields_ = [
        ("use_gpu", c_bool),
        ("device", c_void_p),
        ("print_timings", c_bool),
        ("n_threads", c_int),
        ("image_marker", c_char_p),
        ("media_marker", c_char_p),
        ("flash_attn_type", c_int),
        ("warmup", c_bool),
        ("image_min_tokens", c_int),
        ("image_max_tokens", c_int),
        ("cb_eval", c_void_p),
        ("cb_eval_user_data", c_void_p),
        ("batch_max_tokens", c_int32),
        ("progress_callback", c_void_p),
        ("progress_callback_user_data", c_void_p),
    ]


class mtmd_helper_video_init_params(ctypes.Structure):
    _fields_ = [("fps_target", c_float), ("ffmpeg_bin_dir", c_char_p), ("timestamp_interval_ms", c_int64)]


class mtmd_helper_init_opt(ctypes.Structure):
    _fields_ = [("video_params", mtmd_helper_video_init_params)]


class mtmd_helper_bitmap_wrapper(ctypes.Structure):
    _fields_ = [("bitmap", c_void_p), ("video_ctx", c_void_p)]


class mtmd_input_text(ctypes.Structure):
    _fields_ = [("text", c_char_p), ("text_len", c_size_t), ("add_special", c_bool), ("parse_special", c_bool)]


# Checked against the pinned mtmd.h and mtmd-helper.h with tests/layout.py's compiler check when written
# (those headers are not shipped in _lib/include, so the layout test does not see them).
STRUCTS = (mtmd_context_params, mtmd_helper_video_init_params, mtmd_helper_init_opt, mtmd_helper_bitmap_wrapper,
           mtmd_input_text)

FUNCTIONS: dict[str, tuple[list[Any], Any]] = {
    "mtmd_context_params_default": ([], mtmd_context_params),
    "mtmd_init_from_file": ([c_char_p, c_void_p, mtmd_context_params], c_void_p),
    "mtmd_free": ([c_void_p], None),
    "mtmd_support_vision": ([c_void_p], c_bool),
    "mtmd_decode_use_mrope": ([c_void_p], c_bool),
    "mtmd_helper_log_set": ([capi.log_callback, c_void_p], None),
    "mtmd_helper_init_opt_default": ([], mtmd_helper_init_opt),
    "mtmd_helper_bitmap_init_from_buf": ([c_void_p, c_char_p, c_size_t, c_bool, mtmd_helper_init_opt],
                                         mtmd_helper_bitmap_wrapper),
    "mtmd_helper_video_free": ([c_void_p], None),
    "mtmd_bitmap_free": ([c_void_p], None),
    "mtmd_bitmap_get_id": ([c_void_p], c_char_p),
    "mtmd_bitmap_get_nx": ([c_void_p], c_uint32),
    "mtmd_bitmap_get_ny": ([c_void_p], c_uint32),
    "mtmd_bitmap_is_audio": ([c_void_p], c_bool),
    "mtmd_input_chunks_init": ([], c_void_p),
    "mtmd_input_chunks_size": ([c_void_p], c_size_t),
    "mtmd_input_chunks_get": ([c_void_p, c_size_t], c_void_p),
    "mtmd_input_chunks_free": ([c_void_p], None),
    "mtmd_tokenize": ([c_void_p, c_void_p, POINTER(mtmd_input_text), POINTER(c_void_p), c_size_t], c_int32),
    "mtmd_input_chunk_get_type": ([c_void_p], c_int),
    "mtmd_input_chunk_get_tokens_text": ([c_void_p, POINTER(c_size_t)], POINTER(capi.llama_token)),
    "mtmd_input_chunk_get_n_tokens": ([c_void_p], c_size_t),
    "mtmd_input_chunk_get_n_pos": ([c_void_p], capi.llama_pos),
    "mtmd_input_chunk_get_id": ([c_void_p], c_char_p),
    "mtmd_input_chunk_copy": ([c_void_p], c_void_p),
    "mtmd_input_chunk_free": ([c_void_p], None),
    "mtmd_encode_chunk": ([c_void_p, c_void_p], c_int32),
    "mtmd_get_output_embd": ([c_void_p], POINTER(c_float)),
    "mtmd_helper_decode_image_chunk": ([c_void_p, c_void_p, c_void_p, POINTER(c_float), capi.llama_pos,
                                        capi.llama_seq_id, c_int32, POINTER(capi.llama_pos), c_void_p, c_void_p],
                                       c_int32),
}


class ProjectorError(ValueError):
    """The projector file does not serve this model (another model's, another width, not a projector): the
    request that loads it is refused (400), as for any model the user's files cannot make."""


class ImageError(ValueError):
    """An image the projector cannot take (not an image, truncated, a format it does not read): a 400."""


@functools.cache
def mtmd() -> Any:
    """libmtmd, loaded once, its log routed where llama.cpp's goes."""
    lib.libs()  # llama.cpp's backends first: mtmd runs on them
    path = lib.LIB_DIR / "libmtmd.so.0"
    if not path.exists():
        raise lib.LibraryNotBuilt(f"{path} is missing: rebuild the native libraries (pip install -e .)")
    functions = lib._Functions(ctypes.CDLL(str(path), mode=ctypes.RTLD_LOCAL), FUNCTIONS)
    functions.mtmd_helper_log_set(lib._native_log.callback, None)
    return functions


class Projector(Handle):
    """An mmproj GGUF loaded for one text model (mtmd_context)."""

    def __init__(self, path: str | Path, model: Model, *, n_threads: int = 0) -> None:
        m = mtmd()
        params = m.mtmd_context_params_default()
        # A marker no user text can hold: it is where the renderer puts each image.
        self.marker = f"<__ollama_py_image_{secrets.token_hex(8)}__>"
        self._marker_c = self.marker.encode()
        params.media_marker = self._marker_c
        params.print_timings = False
        # A warm-up computes a graph on the loading thread, and each thread that computes keeps a team of
        # OpenMP threads that slows the runner's steps (Runner.call): the first image allocates instead.
        params.warmup = False
        if n_threads > 0:
            params.n_threads = n_threads
        ptr = m.mtmd_init_from_file(str(path).encode(), model.ptr, params)
        if not ptr:
            raise ProjectorError(f"cannot load the projector {Path(path).name} for this model "
                                 "(see the log: a projector for another model, or not a projector)")
        super().__init__(ptr, m.mtmd_free, parent=model, what="projector")
        self.path = Path(path)
        self.n_embd = model.n_embd
        if not m.mtmd_support_vision(ptr):
            self.close()
            raise ProjectorError(f"{self.path.name} is not a vision projector")
        if m.mtmd_decode_use_mrope(ptr):
            # An image's positions then differ from its token count, which the runner's slots count by.
            self.close()
            raise ProjectorError(f"{self.path.name}: models with M-RoPE image positions (Qwen2-VL and kin) "
                                 "are not supported")

    def bitmap(self, data: bytes) -> Bitmap:
        """An image file (PNG, JPEG, GIF, BMP) decoded into pixels; ImageError when it is none."""
        if not data.startswith(IMAGE_SIGNATURES):
            raise ImageError("not a PNG, JPEG, GIF or BMP image")
        m = mtmd()
        wrapper = m.mtmd_helper_bitmap_init_from_buf(self.ptr, data, len(data), False,
                                                     m.mtmd_helper_init_opt_default())
        if wrapper.video_ctx:
            m.mtmd_helper_video_free(wrapper.video_ctx)
            if wrapper.bitmap:
                m.mtmd_bitmap_free(wrapper.bitmap)
            raise ImageError("videos are not supported, only images")
        if not wrapper.bitmap:
            raise ImageError("the image could not be decoded (not an image, truncated, or an unsupported format)")
        bitmap = Bitmap(wrapper.bitmap)
        if m.mtmd_bitmap_is_audio(bitmap.ptr):
            bitmap.close()
            raise ImageError("audio is not supported, only images")
        return bitmap

    def tokenize(self, text: str, bitmaps: list[Bitmap], *, add_special: bool = True) -> list[list[int] | ImageChunk]:
        """`text` (one marker per bitmap, in order) as runs of text tokens and image chunks."""
        m = mtmd()
        raw = text.encode()
        c_text = mtmd_input_text(text=raw, text_len=len(raw), add_special=add_special, parse_special=True)
        array = (c_void_p * max(1, len(bitmaps)))(*(b.ptr for b in bitmaps))
        with _Chunks() as chunks:
            code = m.mtmd_tokenize(self.ptr, chunks.ptr, ctypes.byref(c_text), array, len(bitmaps))
            if code == 1:
                raise ImageError(f"the prompt holds a different number of image markers than its {len(bitmaps)} "
                                 "images")
            if code != 0:
                raise ImageError("an image could not be preprocessed for the model's projector")
            parts: list[list[int] | ImageChunk] = []
            for i in range(m.mtmd_input_chunks_size(chunks.ptr)):
                chunk = m.mtmd_input_chunks_get(chunks.ptr, i)
                kind = m.mtmd_input_chunk_get_type(chunk)
                if kind == CHUNK_TEXT:
                    n = c_size_t()
                    tokens = m.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                    parts.append(tokens[:n.value])
                elif kind == CHUNK_IMAGE:
                    parts.append(ImageChunk(m.mtmd_input_chunk_copy(chunk), self))
                else:
                    raise ImageError("only images are supported")
            return parts

    def decode_image(self, ctx: Context, chunk: ImageChunk, n_past: int, seq_id: int, n_batch: int) -> None:
        """Encodes the image and decodes its embeddings into `seq_id` from position `n_past` (context's thread)."""
        m = mtmd()
        if m.mtmd_encode_chunk(self.ptr, chunk.ptr) != 0:
            raise LlamaError("the projector could not encode an image")
        embd = m.mtmd_get_output_embd(self.ptr)
        new_n_past = capi.llama_pos()
        ctx.reference_kernels(False)
        code = m.mtmd_helper_decode_image_chunk(self.ptr, ctx.ptr, chunk.ptr, embd, n_past, seq_id, n_batch,
                                                ctypes.byref(new_n_past), None, None)
        if code != 0:
            raise LlamaError(f"decoding an image's embeddings failed ({code})")

    def embeddings(self, chunk: ImageChunk) -> list[list[float]]:
        """The image's embeddings, one row of `n_embd` per image token (for tests and inspection)."""
        m = mtmd()
        if m.mtmd_encode_chunk(self.ptr, chunk.ptr) != 0:
            raise LlamaError("the projector could not encode an image")
        embd = m.mtmd_get_output_embd(self.ptr)
        return [embd[row * self.n_embd:(row + 1) * self.n_embd] for row in range(chunk.n_tokens)]


class Bitmap(Handle):
    """Decoded pixels of one image; `id` is the SHA-256 of its pixels, as mtmd's helper sets it."""

    def __init__(self, ptr: int) -> None:
        super().__init__(ptr, mtmd().mtmd_bitmap_free, what="bitmap")
        m = mtmd()
        self.id: str = (m.mtmd_bitmap_get_id(ptr) or b"").decode()
        self.size = (int(m.mtmd_bitmap_get_nx(ptr)), int(m.mtmd_bitmap_get_ny(ptr)))


class _Chunks(Handle):
    def __init__(self) -> None:
        super().__init__(mtmd().mtmd_input_chunks_init(), mtmd().mtmd_input_chunks_free, what="chunks")


class ImageChunk(Handle):
    """One image's tokens after preprocessing, owned apart from the tokenize call that made it."""

    def __init__(self, ptr: int, projector: Projector) -> None:
        super().__init__(ptr, mtmd().mtmd_input_chunk_free, parent=projector, what="image chunk")
        m = mtmd()
        self.projector = projector
        self.n_tokens = int(m.mtmd_input_chunk_get_n_tokens(ptr))
        self.n_pos = int(m.mtmd_input_chunk_get_n_pos(ptr))
        self.id: str = (m.mtmd_input_chunk_get_id(ptr) or b"").decode()
