"""The semantic expression morphs of both domains, and the pose convention.

Anime heads carry 17 morphs (AnimeCeleb's count; its list was never published, so ours is
chosen to cover the eyes per side, the brows and the mouth). The five vowel shapes sit at
indices 12–16, where Animo/EDTN apply their mouth boost. "Left" is always the character's own
left, which appears on the image's right in a frontal view. Human heads carry anny's 52
ARKit-named blendshapes, in anny's order.
"""
from __future__ import annotations

#: name → what it does (index = position in the 17-d morph vector)
ANIME_MORPHS: dict[str, str] = {
    "eye_close_left": "left eye closes to a relaxed downward arc",
    "eye_close_right": "right eye closes to a relaxed downward arc",
    "eye_smile_left": "left eye closes to an upward 'happy' arc (^)",
    "eye_smile_right": "right eye closes to an upward 'happy' arc (^)",
    "eye_wide_left": "left eye opens wide (taller, slightly larger)",
    "eye_wide_right": "right eye opens wide (taller, slightly larger)",
    "brow_raise": "both brows lift (surprise)",
    "brow_angry": "inner brow ends drop, outer ends lift",
    "brow_sad": "inner brow ends lift, outer ends drop",
    "iris_small": "irises and pupils shrink (shock)",
    "mouth_smile": "mouth corners curve up",
    "mouth_frown": "mouth corners curve down",
    "mouth_a": "vowel 'a': open, tall",
    "mouth_i": "vowel 'i': wide, narrow opening",
    "mouth_u": "vowel 'u': small, round",
    "mouth_e": "vowel 'e': wide, half open",
    "mouth_o": "vowel 'o': round, open",
}
ANIME_MORPH_NAMES: list[str] = list(ANIME_MORPHS)
assert len(ANIME_MORPH_NAMES) == 17

#: the 52 ARKit blendshape names, in the order anny's ``facial_action_labels`` uses
HUMAN_MORPH_NAMES: list[str] = [
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
    "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight", "tongueOut",
]
assert len(HUMAN_MORPH_NAMES) == 52

MORPHS_BY_DOMAIN: dict[str, list[str]] = {"anime": ANIME_MORPH_NAMES, "human": HUMAN_MORPH_NAMES}

#: Pose convention (degrees), applied by the head rig about the neck joint, in this order:
#: roll, then pitch, then yaw (R = Rz(yaw) · Rx(−pitch) · Ry(roll)); the camera looks along +Y.
POSE_CONVENTION = {
    "yaw": "positive turns the head to its own left: the face moves toward the image's right",
    "pitch": "positive tilts the head up (chin rises)",
    "roll": "positive tilts the top of the head toward the image's right (clockwise on screen)",
}
