"""The console in English and Simplified Chinese: the English text is the key.

`translate(lang, text, **fields)` returns the text in the user's language with `{fields}`
filled in; a text without a translation falls back to English (tests/test_console.py checks that
every text the templates use has one). Visitor texts live in edge/screen/texts.py.
"""

from __future__ import annotations

ZH: dict[str, str] = {
    # navigation and common words
    "Lanes": "通道",
    "Decisions": "通行记录",
    "Enrollment": "人脸登记",
    "People": "人员",
    "Tickets": "门票",
    "Audit": "审计",
    "Users": "用户",
    "fleet": "闸机组",
    "connected": "已连接",
    "not connected": "未连接",
    "Log out": "退出",
    "Log in": "登录",
    "User": "用户名",
    "Password": "密码",
    "steward": "引导员",
    "supervisor": "主管",
    "admin": "管理员",
    "Refused": "已拒绝",
    "Back": "返回",
    "all": "全部",
    "Filter": "筛选",
    "Time": "时间",
    "Lane": "通道",
    "Outcome": "结果",
    "Reason": "原因",
    "Subject": "对象",
    "Detail": "详情",
    "Kind": "类型",
    "grant": "放行",
    "deny": "拒绝",
    "-": "-",
    "Since": "起始时间",
    "Since: not read, so every time is shown:": "起始时间无法识别，显示全部时间：",
    "Via": "方式",
    "Score": "分数",
    "Name": "姓名",
    "Pass": "年卡",
    "Valid until": "有效期至",
    "Templates": "模板",
    "Id": "编号",
    "Search": "搜索",
    "State": "状态",
    "Role": "角色",
    "Language": "语言",
    # errors
    "CSRF token missing or wrong: reload the page": "CSRF 令牌缺失或错误：请刷新页面",
    "Your role may not do this": "您的角色无权执行此操作",
    "The form expired: try again": "表单已过期，请重试",
    "Too many failed logins: wait {s} s": "登录失败次数过多：请等待 {s} 秒",
    "Wrong user name or password": "用户名或密码错误",
    # lanes
    "This office has no [fleet] section: no lanes to show.": (
        "办公室配置中没有 [fleet] 部分：无通道可显示。"
    ),
    "Mode": "模式",
    "Camera": "摄像头",
    "fps": "帧率",
    "Clock offset": "时钟偏差",
    "Last decision": "最近决定",
    "Outbox": "待发送",
    "Model": "模型",
    "Config": "配置",
    "Heartbeat": "心跳",
    "online": "在线",
    "stale": "失联",
    "CLOCK OFF": "时钟错误",
    "BROKER ACL OUTDATED": "消息代理 ACL 已过时",
    "pretix data": "pretix 数据",
    "missing": "缺失",
    "STALE": "过期",
    "No lane has reported yet.": "尚无通道上报。",
    "Models": "模型",
    "gone": "已离线",
    "lost": "连接中断",
    "stopped": "已停止",
    "never heard": "从未上报",
    "Open once…": "放行一次…",
    # override
    "Open once": "放行一次",
    "The turnstile of this lane opens once, now: for a visitor staff have checked (a wheelchair"
    " user, a ticket checked by hand). The lane refuses it after {s} s. Both audit logs keep it"
    " with your name and reason.": (
        "此通道的闸机立即放行一次：用于工作人员已核实的访客（轮椅使用者、人工核验的门票）。"
        "{s} 秒后通道将拒绝此指令。两份审计日志都会记录您的姓名和原因。"
    ),
    "Open lane {lane} once": "放行通道 {lane} 一次",
    "Override {id} sent to {lane}.": "放行指令 {id} 已发送到 {lane}。",
    "Override {id} queued: the office's sync has not sent it yet.": (
        "放行指令 {id} 已排队：办公室的同步进程尚未发送。"
    ),
    "The lane opened.": "通道已放行。",
    "The lane refused it:": "通道拒绝了此指令：",
    "Waiting for the lane…": "等待通道响应…",
    "No answer from the lane within its validity: it did not open (see the Lanes page).": (
        "通道在有效期内未响应：闸机未放行（请查看通道页面）。"
    ),
    # decisions
    "Pseudonymous: people appear by id. A supervisor may reveal a name; each reveal is written"
    " to the audit log.": "化名显示：人员以编号出现。主管可查看姓名，每次查看都记入审计日志。",
    "live": "实时",
    "Person or ticket": "人员或门票",
    "Reveal name": "显示姓名",
    # enrollment
    "Enrollment kiosk": "人脸登记台",
    "No face: look at the camera": "未检测到人脸：请看摄像头",
    "More than one face: only the visitor in view": "多于一张人脸：画面中只能有登记者",
    "Face too small: come closer": "人脸太小：请靠近",
    "Blurred: hold still": "图像模糊：请保持不动",
    "Turned away: look straight at the camera": "侧脸：请正视摄像头",
    "Too dark": "太暗",
    "Too bright": "太亮",
    "Face not usable": "人脸不可用",
    "Good face kept": "已采集合格人脸",
    "Camera not available: upload photos instead": "摄像头不可用：请改为上传照片",
    "Consent": "同意",
    "No consent notice is configured (console.consent_version): enrollment is refused.": (
        "未配置同意告知（console.consent_version）：拒绝登记。"
    ),
    "Notice version": "告知版本",
    "(no English text configured)": "（未配置英文文本）",
    "(no Chinese text configured)": "（未配置中文文本）",
    "Notice read in": "阅读语言",
    "The visitor has read this notice and agrees to enrollment": "访客已阅读此告知并同意登记",
    "Visitor": "访客",
    "Under 14: a guardian consents": "未满 14 岁：由监护人同意",
    "Guardian": "监护人",
    "Face": "人脸",
    "Faces in view": "画面中人脸数",
    "Face size": "人脸大小",
    "Sharpness": "清晰度",
    "Start camera": "打开摄像头",
    "or upload photos": "或上传照片",
    "Enroll and publish to the lanes": "登记并发送到各通道",
    "Enroll at the office": "在办公室登记",
    # people
    "Search name, pass or id": "搜索姓名、年卡或编号",
    "minor": "未成年",
    "no expiry": "无期限",
    "expired": "已过期",
    "DAMAGED": "已损坏",
    "Nobody found.": "未找到任何人。",
    "{n} people match; the first {k} are shown: search to narrow.": (
        "共 {n} 人符合；仅显示前 {k} 人：请搜索以缩小范围。"
    ),
    "Person": "人员",
    "Enrolled with {n} templates.": "已登记 {n} 个模板。",
    "Sent to the lanes.": "已发送到各通道。",
    "Not published (no fleet or no issuer key).": "未发送（无闸机组或无签发密钥）。",
    "Deletion published to every lane.": "删除指令已发送到所有通道。",
    "Deletion queued for every lane: the office's sync sends it when it runs.": (
        "删除指令已排队发往所有通道：办公室的同步进程运行时发送。"
    ),
    "Erased at the office.": "已在办公室删除。",
    "No such person at the office; nothing was erased here.": (
        "办公室没有此人；此处未删除任何内容。"
    ),
    "Not in the office gallery.": "不在办公室人脸库中。",
    "enrolled on {k} of {n} lanes": "已在 {n} 个通道中的 {k} 个登记",
    "forgotten on {k} of {n} lanes": "已在 {n} 个通道中的 {k} 个删除",
    "not sent to the lanes": "未发送到通道",
    "Acknowledged": "已确认",
    "deletion request": "删除请求",
    "consent withdrawn": "撤回同意",
    "Erase this person at the office and on every lane?": "在办公室和所有通道删除此人？",
    "Forget on every lane": "在所有通道删除",
    # tickets
    "Ticket code": "门票代码",
    "or a photo of it": "或门票照片",
    "Check": "查验",
    "Valid": "有效",
    "Not valid": "无效",
    "Ticket": "门票",
    "Use across lanes": "各通道使用记录",
    "No lane has seen it.": "尚无通道使用过。",
    "Revoke": "作废",
    "Ticket ids": "门票编号",
    "Revoke on every lane": "在所有通道作废",
    "Un-revoke on every lane": "在所有通道撤销作废",
    "Un-revoking lifts the office's revocation on every lane; a ticket a lane revoked itself "
    "stays revoked there.": (
        "撤销作废会在所有通道解除办公室的作废；通道自行作废的门票在该通道仍保持作废。"
    ),
    "Revoked": "已作废",
    "Revoked {n} ticket(s)": "已作废 {n} 张门票",
    "list of {n} sent to the lanes": "共 {n} 条的列表已发送到各通道",
    "list of {n} queued for the lanes: the office's sync sends it when it runs": (
        "共 {n} 条的列表已排队发往各通道：办公室的同步进程运行时发送"
    ),
    "lifted on the lanes": "已在各通道解除",
    "lifting queued for the lanes": "解除指令已排队发往各通道",
    "role of {name} set to {role}": "{name} 的角色已设为 {role}",
    "locked user {name}": "已锁定用户 {name}",
    "unlocked user {name}": "已解锁用户 {name}",
    "Un-revoked {n} ticket(s) at the office": "已在办公室撤销作废 {n} 张门票",
    # audit
    "Office audit log": "办公室审计日志",
    "newest record #{n}": "最新记录 #{n}",
    "kept {d} days": "保留 {d} 天",
    "Verify the chain": "校验哈希链",
    "Export CSV": "导出 CSV",
    "Export JSON": "导出 JSON",
    "Chain intact: {n} records, {r} removed by purges; head {id} {h}": (
        "哈希链完整：{n} 条记录，{r} 条已按期清除；链头 {id} {h}"
    ),
    "Chain BROKEN": "哈希链已损坏",
    "Older": "更早",
    # users
    "Set role": "设置角色",
    "locked": "已锁定",
    "active": "正常",
    "Unlock": "解锁",
    "Lock": "锁定",
    "Add a user": "添加用户",
    "Add": "添加",
    "User {name} added": "已添加用户 {name}",
    # decision codes (edge/gate/policy.py Via and Reason, edge/tickets/format.py Reason,
    # edge/fleet/override.py, edge/fleet/state.py): shown translated, filtered and exported by
    # the code
    "face": "人脸",
    "ticket": "门票",
    "face+ticket": "人脸+门票",
    "override": "人工放行",
    "ok": "通过",
    "tailgating": "尾随",
    "not_enrolled": "未登记",
    "anti_passback": "防回传",
    "pass_expired": "年卡已过期",
    "ticket_holder_mismatch": "票证与持有人不符",
    "ledger_error": "通行账本错误",
    "relay_error": "继电器故障",
    "audit_error": "审计日志写入失败",
    "presentation_attack": "疑似照片或屏幕攻击",
    "too_close": "离摄像头太近",
    "clock_behind": "时钟晚于记录",
    "malformed": "无法识别",
    "invalid_signature": "签名无效",
    "unknown_key": "未知密钥",
    "not_yet_valid": "尚未生效",
    "revoked": "已作废",
    "already_used": "已使用",
    "wrong_gate": "非本通道",
    "blocked": "已封禁",
    "rules": "不符合检票规则",
    "rules_unsupported": "无法执行的检票规则",
    "override_expired": "人工放行已过期",
    "override_replayed": "人工放行重复",
    "override_other_lane": "人工放行属于其他通道",
    "override_invalid": "人工放行无效",
    # the fleet link's refusals (edge/fleet/state.py LINK_REASONS)
    "fleet_offline": "与闸机组失去联系",
    "clock_skew": "本通道时钟偏差过大",
    "forget_replay": "删除名单尚未同步",
    "behind_office": "作废名单或通道名册尚未同步",
    "NO TICKETS: BEHIND THE OFFICE": "作废名单或通道名册未同步：暂停验票",
}

CATALOGS = {"zh-CN": ZH}


def translate(lang: str, text: str, **fields: object) -> str:
    """`text` in `lang` (English if there is no translation), with `{fields}` filled in."""
    out = CATALOGS.get(lang, {}).get(text, text)
    return out.format(**fields) if fields else out
