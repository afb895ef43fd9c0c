"""What a visitor reads at the lane, per notice, in every language the park shows.

One table for the lane screen and for the console (which previews it). A notice the table
does not know shows "Please see staff": a visitor is never left without a word.
"""

from __future__ import annotations

VISITOR_TEXTS: dict[str, dict[str, str]] = {
    "welcome": {"en": "Welcome, please pass", "zh-CN": "欢迎光临，请通行"},
    "show_ticket": {"en": "Please show your ticket", "zh-CN": "请出示您的门票"},
    "step_back": {"en": "Step back a little", "zh-CN": "请稍微后退"},
    "come_closer": {"en": "Please come a little closer", "zh-CN": "请稍微靠近"},
    "hold_still": {"en": "Please hold still", "zh-CN": "请保持不动"},
    "ticket_used": {
        "en": "Ticket already used — please see staff",
        "zh-CN": "门票已使用 — 请联系工作人员",
    },
    "see_staff": {"en": "Please see staff", "zh-CN": "请联系工作人员"},
}
IDLE = {"en": "Look at the camera or show your ticket", "zh-CN": "请看摄像头或出示门票"}
NAME_GREETING = {"en": "Hello, {name}", "zh-CN": "{name}，您好"}


def visitor_text(notice: str, lang: str) -> str:
    """The sentence for one notice in one language (English when the language is unknown)."""
    texts = VISITOR_TEXTS.get(notice, VISITOR_TEXTS["see_staff"])
    return texts.get(lang, texts["en"])
