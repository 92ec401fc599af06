"""All-in-One (Wang et al. 2022): raw video frames and text in ONE transformer, with temporal token rolling.

The same `bert.Bert` encoder and the same BERT loading as VLM (`VLM.from_pretrained`); what is new is the frame side:

    row (b, t) = [CLS] w_1..w_n [SEP] [PAD]..  |  CLS_t p_1..p_n          (text copied for every frame t)
                 token type 0, positions 0..    |  type 1, spatial + temporal embeddings

- frame embedding: P x P patches by a strided Conv2d, a per-frame CLS, a spatial position embedding over the
  (S/P)^2 + 1 slots and a learned per-frame (temporal) embedding: N = (S/P)^2 + 1 tokens a frame
  (224 / 16 -> 197; the built-in world's 32 / 8 -> 17);
- temporal token rolling (`roll_tokens`): before every layer of the JOINT pass the visual tokens, viewed as
  (B, T, N, H), exchange slots with the neighbouring frames (fold = N // 8); no parameters; text never rolls,
  and a video-only or text-only pass does not roll. Attention itself never crosses frame rows;
- the output is averaged over the T frame rows; the pooled state is the text [CLS] slot of that average, and a
  2-way head on it scores video-text matching (VTM). MLM reuses VLM's tied head (`VLM.mlm_logits`).

Frame size, patch size and frames per clip come from the config (small frames on the built-in world, 224 / 16
for real video). Models save and load through checkpoint.py (save_model_dir, load_model), the one format of VLM
too; config.json records model="allinone".

    python train.py --model allinone           # pre-training on the built-in world's rendered video
    python -m pytest -q tests/test_allinone.py
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bert import Bert, bert_init
from vlm import VLM, Transform, VLMConfig, check_config, masked_mean


@dataclass
class AllInOneConfig(VLMConfig):
    model: str = "allinone"         # model kind, recorded in config.json (a VLM config has no such field)
    frame_size: int = 224           # S: frames are S x S RGB (short side resized, centre-cropped)
    patch_size: int = 16            # P: P x P patches by a strided convolution, (S / P)^2 a frame
    num_frames: int = 3             # T: frames per clip (rows of the temporal embedding; paper 3, 8 in pre-training)
    max_text_len: int = 40          # text positions per row: [CLS] + content + [SEP] (paper: 40)


def check_frames_config(cfg, where="config"):
    """Refuse a frames config this code cannot run (on top of vlm.check_config)."""
    check_config(cfg, where)
    if cfg.model != "allinone":
        raise ValueError(f"{where}: model={cfg.model!r}, expected 'allinone'")
    if cfg.frame_size % cfg.patch_size:
        raise ValueError(f"{where}: frame_size {cfg.frame_size} is not a multiple of patch_size {cfg.patch_size}")
    if cfg.max_position_embeddings < cfg.max_text_len:
        raise ValueError(f"{where}: max_position_embeddings {cfg.max_position_embeddings} < max_text_len "
                         f"{cfg.max_text_len}")


def roll_tokens(x, fold):
    """Temporal token rolling on visual tokens x (B, T, N, H) -> (B, T, N, H), circular over T.

    Slot 0 (the frame's CLS) stays; slots 1..fold take frame (t - 1 mod T)'s tokens at the same slots; the
    last `fold` slots take frame (t + 1 mod T)'s; the slots in between stay. fold = 0 returns x unchanged."""
    N = x.shape[2]
    if fold == 0:
        return x
    if 1 + 2 * fold > N:
        raise ValueError(f"roll_tokens: fold {fold} needs N >= {1 + 2 * fold} tokens a frame, got {N}")
    prev = torch.roll(x[:, :, 1:1 + fold], shifts=1, dims=1)    # out[:, t] = x[:, t - 1]
    nxt = torch.roll(x[:, :, N - fold:], shifts=-1, dims=1)     # out[:, t] = x[:, t + 1]
    return torch.cat([x[:, :, :1], prev, x[:, :, 1 + fold:N - fold], nxt], 2)


class FrameEmbed(nn.Module):
    """Frames (B, T, 3, S, S) in [-1, 1] -> tokens (B, T, N, H): Conv2d patches, frame CLS, spatial + temporal."""

    def __init__(self, cfg):
        super().__init__()
        H, P = cfg.hidden_size, cfg.patch_size
        self.n = (cfg.frame_size // P) ** 2 + 1  # N tokens a frame
        self.conv = nn.Conv2d(3, H, kernel_size=P, stride=P)
        self.cls = nn.Parameter(torch.zeros(1, 1, H))
        self.pos = nn.Parameter(torch.zeros(1, self.n, H))  # spatial position embedding, slot 0 = CLS
        self.temporal = nn.Parameter(torch.zeros(cfg.num_frames, 1, H))  # learned per-frame embedding

    def forward(self, frames):
        B, T = frames.shape[:2]
        if T > self.temporal.shape[0]:
            raise ValueError(f"allinone: {T} frames a clip, the config has num_frames {self.temporal.shape[0]}")
        x = self.conv(frames.flatten(0, 1)).flatten(2).transpose(1, 2)  # (B*T, N-1, H)
        x = torch.cat([self.cls.expand(B * T, -1, -1), x], 1) + self.pos  # (B*T, N, H)
        return x.view(B, T, self.n, -1) + self.temporal[:T]  # (B, T, N, H)


class AllInOne(nn.Module):
    config_class = AllInOneConfig  # what from_pretrained builds
    new_parts = ("frames.", "vtm_head.")  # not in a BERT checkpoint: keep their fresh init (from_pretrained)
    new_note = "allinone: the frame embedding and the VTM head are new: initialised fresh"

    def __init__(self, cfg):
        super().__init__()
        check_frames_config(cfg)
        self.config = cfg
        self.bert = Bert(cfg)
        self.frames = FrameEmbed(cfg)
        self.transform = Transform(cfg)
        self.output_bias = nn.Parameter(torch.zeros(cfg.vocab_size))  # BERT's cls.predictions.bias
        self.vtm_head = nn.Linear(cfg.hidden_size, 2)  # video-text matching: 0 = mismatched, 1 = matched
        self.tokenizer_dir = None  # where tokenizer files came from (checkpoint.save_model_dir copies them)
        self._init_weights()

    def _init_weights(self):
        """BERT's init (bert_init, std initializer_range) everywhere, with one special case: the frame CLS, the
        spatial and the temporal embeddings (plain parameters, not modules) get normal(0, 0.02)."""
        self.apply(lambda m: bert_init(m, self.config.initializer_range))
        for p in (self.frames.cls, self.frames.pos, self.frames.temporal):
            nn.init.normal_(p, std=0.02)

    # shared with VLM: the tied MLM head (Eq. 4 of the VLM paper)
    word_embeddings = VLM.word_embeddings
    mlm_logits = VLM.mlm_logits

    @property
    def tokens_per_frame(self):
        return self.frames.n

    def text_ids(self, text_ids, text_mask):
        """(B, Lt) content ids -> ids (B, Lt + 2) = [CLS] w_1..w_n [SEP] [PAD].., keep (B, Lt + 2) bool."""
        cfg = self.config
        B, Lt = text_ids.shape
        if Lt + 2 > cfg.max_text_len:
            raise ValueError(f"allinone: text has {Lt} columns, at most {cfg.max_text_len - 2} fit (max_text_len)")
        ids = F.pad(torch.where(text_mask.bool(), text_ids, cfg.pad_token_id), (1, 1), value=cfg.pad_token_id)
        n = text_mask.sum(1)  # (B,)
        ids[:, 0] = cfg.cls_token_id
        ids[torch.arange(B, device=ids.device), n + 1] = cfg.sep_token_id
        keep = torch.arange(Lt + 2, device=ids.device)[None] < (n + 2)[:, None]
        return ids, keep

    def video_tokens(self, frames):
        """uint8 (B, T, 3, S, S) or float in [0, 1] -> embedded visual tokens (B, T, N, H), token type 1."""
        x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames
        x = self.frames((x * 2 - 1).to(self.frames.conv.weight.dtype))  # (B, T, N, H)
        return self.bert.drop(self.bert.ln_emb(x + self.bert.wtt.weight[1]))

    # --- unimodal passes: no rolling (there is no other modality to fuse) --------------------------------

    def video_states(self, frames):
        """(B, T, N, H): each frame alone through the layers, no rolling."""
        v = self.video_tokens(frames)
        B, T, N, H = v.shape
        return self.bert.run(v.reshape(B * T, N, H), None)[0].view(B, T, N, H)

    def encode_video(self, frames):
        """(B, H): mean over the T frames and their N tokens."""
        return self.video_states(frames).mean((1, 2))

    def encode_text(self, text_ids, text_mask):
        """(B, H): mean over [CLS] w_1..w_n [SEP] of a text-only pass (token type 0)."""
        ids, keep = self.text_ids(text_ids, text_mask)
        return masked_mean(self.bert(ids, keep), keep)

    # --- the joint pass ----------------------------------------------------------------------------------

    def forward(self, frames, text_ids, text_mask, roll=True):
        """Joint pass -> (B, Lt + 2 + N, H), averaged over the T frame rows. Row (b, t) = [text ; frame t],
        rolling (fold = N // 8) before every layer; roll=False switches it off (for tests and ablations)."""
        ids, keep = self.text_ids(text_ids, text_mask)
        t = self.bert.embed(ids)  # (B, L, H) positions 0.., type 0
        v = self.video_tokens(frames)  # (B, T, N, H)
        B, T, N, H = v.shape
        L = t.shape[1]
        x = torch.cat([t[:, None].expand(B, T, L, H), v], 2).reshape(B * T, L + N, H)  # (B*T, L+N, H)
        mask = F.pad(keep, (0, N), value=True).repeat_interleave(T, 0)[:, None, None, :]  # keys (B*T, 1, 1, L+N)
        fold = N // 8 if roll else 0
        for layer in self.bert.layers:
            x = torch.cat([x[:, :L], roll_tokens(x[:, L:].view(B, T, N, H), fold).reshape(B * T, N, H)], 1)
            x, _ = layer(x, mask)
        return x.view(B, T, L + N, H).mean(1)  # (B, L+N, H)

    def vtm_logits(self, frames, text_ids, text_mask):
        """(B, 2) video-text matching logits from the pooled state (text [CLS] slot of the averaged rows)."""
        return self.vtm_head(self(frames, text_ids, text_mask)[:, 0])

    # --- the way in from Hugging Face BERT ---------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path, **frame_args):
        """From a Hugging Face BERT directory (its encoder, embeddings and MLM head; the frame embedding and the
        VTM head are new) or from one of our model directories: VLM.from_pretrained's loader, building this
        class. frame_args: frame_size, patch_size, num_frames, ... (config fields; ignored for our directories)."""
        return VLM.from_pretrained.__func__(cls, path, **frame_args)
