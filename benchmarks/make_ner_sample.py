"""Writes the bundled NER sample, sbert_cli/resources/ner-sample-{train,dev}.txt: synthetic Chinese sentences from
the name, place and organisation lists and sentence templates below (written for sbert; no corpus is copied),
tagged in BMES as MSRA is (one character per line, `B-PER M-PER E-PER`, `S-LOC`, a blank line between sentences).

Dev sentences draw a fifth of their entities from names, places and organisations that train never shows, so the
dev score says something about entities the model has not memorised. Seeded: the same files every run (a test
checks that the bundled files are this script's output).

    python benchmarks/make_ner_sample.py [OUT_DIR]     (default: sbert_cli/resources)
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

SURNAMES = ("王 李 张 刘 陈 杨 赵 黄 周 吴 徐 孙 胡 朱 高 林 何 郭 马 罗 梁 宋 郑 谢 韩 唐 冯 于 董 萧 程 曹 袁 邓 许 傅 沈 曾 "
            "彭 吕 苏 卢 蒋 蔡 贾 丁 魏 薛 叶 阎 余 潘 杜 戴 夏 钟 汪 田 任 姜 范 方 石 姚 谭 廖 邹 熊 金 陆 郝 孔 白 "
            "崔 康 毛 邱 秦 江 史 顾 侯 邵 孟 龙 万 段 雷 钱 汤 尹 黎 易 常 武 乔 贺 赖 龚 文 欧阳 司马 诸葛 上官").split()
GIVEN = ("伟 芳 娜 秀英 敏 静 丽 强 磊 军 洋 勇 艳 杰 娟 涛 明 超 秀兰 霞 平 刚 桂英 建国 志强 海燕 小红 晓明 文杰 "
         "子轩 雨涵 浩然 欣怡 梓萱 宇航 思远 佳琪 俊杰 嘉怡 天翼 若曦 立新 国庆 红梅 春生 秋菊 冬梅 海涛 德华 "
         "振宇 晨 曦 婷 鑫 斌 宁 凯 琳 颖 博文 家豪 一鸣 慧敏 永红 志明 建华 玉兰 宏伟 晓东 丽华 金凤 光荣").split()
PLACES = ("北京 上海 广州 深圳 杭州 南京 武汉 成都 西安 重庆 天津 苏州 长沙 郑州 青岛 大连 厦门 昆明 哈尔滨 乌鲁木齐 拉萨 "
          "香港 澳门 台北 沈阳 济南 福州 合肥 南昌 贵阳 南宁 兰州 西宁 银川 呼和浩特 石家庄 太原 海口 三亚 桂林 "
          "洛阳 开封 绍兴 无锡 宁波 温州 珠海 汕头 日本 美国 法国 德国 英国 俄罗斯 印度 巴西 埃及 澳大利亚 加拿大 "
          "意大利 西班牙 韩国 新加坡 泰国 越南 南非 墨西哥 阿根廷 河北省 广东省 四川省 浙江省 云南省 江苏省 山东省 "
          "湖南省 黑龙江省 新疆 西藏 内蒙古 长江 黄河 泰山 黄山 华山 峨眉山 珠穆朗玛峰 太湖 洞庭湖 青海湖 "
          "东京 纽约 伦敦 巴黎 柏林 莫斯科 悉尼 开罗 首尔 曼谷").split()
ORGS = ("清华大学 北京大学 复旦大学 浙江大学 南京大学 武汉大学 中山大学 中国科学院 中国社会科学院 国家统计局 "
        "中国银行 中国人民银行 人民日报社 新华社 联合国 世界卫生组织 中央电视台 上海交通大学 国务院 外交部 教育部 "
        "国家体育总局 中国足球协会 中国作家协会 红十字会 世界银行 国际奥委会 欧洲联盟 东南亚国家联盟 中国铁路总公司 "
        "中国石油天然气集团 国家电网公司 海尔集团 联想集团 华为公司 IBM公司 中国科学技术大学 故宫博物院 "
        "中国国家图书馆 全国人大常委会 中国共产党中央委员会 最高人民法院 中国民航局 世界贸易组织 北京电影学院").split()
ORG_SUFFIXES = "市人民医院 第一中学 大学 市政府 电视台 图书馆 日报社 师范大学 博物馆 体育局".split()
PROVINCIAL = PLACES[:PLACES.index("日本")]  # the Chinese cities: 无锡 + 市人民医院, not 法国 + 市人民医院

TEMPLATES = [
    "{PER}昨天在{LOC}会见了{ORG}代表团。",
    "{ORG}发言人{PER}表示，{LOC}的经济形势总体平稳。",
    "据{ORG}消息，{PER}将于{DATE}访问{LOC}。",
    "{PER}和{PER}一起去{LOC}旅游。",
    "{LOC}是一座美丽的城市，每年吸引{NUM}万名游客。",
    "{PER}毕业于{ORG}，现在在{LOC}工作。",
    "来自{LOC}的选手{PER}获得了冠军。",
    "{ORG}在{LOC}召开了第{NUM}届年会。",
    "记者{PER}从{ORG}获悉，{LOC}今年粮食产量增长{NUM}%。",
    "今天天气很好，我们去公园散步。",
    "{PER}说：“{LOC}的冬天很冷。”",
    "{PER}用iPhone拍下了{LOC}的夜景。",
    "{ORG}与{ORG}签署了合作协议。",
    "{PER}在{ORG}担任教授已有{NUM}年。",
    "{LOC}{LOC}两地的交流日益密切。",
    "{PER}{PER}夫妇昨日抵达{LOC}。",
    "这场比赛吸引了{NUM}万名观众。",
    "{ORG}宣布，{DATE}起{LOC}地铁票价调整。",
    "{PER}是{ORG}的一名工程师，他经常去{LOC}出差。",
    "{DATE}，{ORG}公布了最新的统计数据。",
    "{PER}认为，{LOC}的发展离不开{ORG}的支持。",
    "在{LOC}举行的会议上，{PER}作了题为《面向未来》的报告。",
    "{PER}（{LOC}）以{NUM}分的成绩名列第一。",
    "{ORG}的研究人员在{LOC}发现了一种新的植物。",
    "{PER}给{PER}打电话，说他{DATE}到{LOC}。",
    "这本书由{PER}翻译，{ORG}出版。",
    "会后，{PER}参观了{ORG}，并听取了{PER}的介绍。",
    "从{LOC}到{LOC}的高铁全长{NUM}公里，是连接两地的重要通道，沿途经过{LOC}等地，{ORG}负责运营。",
    "{PER}在{LOC}出生，在{LOC}长大，后来考入{ORG}，毕业后加入{ORG}，{DATE}调往{LOC}，"
    "现任{ORG}副主任，他说自己最难忘的是在{LOC}的那些年。",
    "我们在NBA比赛中看到了{PER}的精彩表现。",
    "CCTV5转播了{LOC}对{LOC}的足球比赛。",
    "{PER}的５Ｇ手机在{LOC}卖出了{NUM}台。",
    "价格上涨了{NUM}%，{ORG}表示将密切关注。",
    "他说：“我不同意这个看法。”",
]


def split_held_out(items: list[str], rng: random.Random) -> tuple[list[str], list[str]]:
    items = sorted(set(items))
    rng.shuffle(items)
    cut = len(items) * 4 // 5
    return items[:cut], items[cut:]


def fill(template: str, rng: random.Random, pools: dict[str, list[str]]) -> tuple[str, list[tuple[int, int, str]]]:
    """The sentence and its entities (start, end exclusive, type)."""
    text, spans = "", []
    rest = template
    while "{" in rest:
        before, slot_and_rest = rest.split("{", 1)
        slot, rest = slot_and_rest.split("}", 1)
        text += before
        if slot == "NUM":
            value = str(rng.choice([rng.randint(2, 99), rng.randint(100, 9999)]))
        elif slot == "DATE":
            value = f"{rng.randint(1990, 2026)}年{rng.randint(1, 12)}月{rng.randint(1, 28)}日"
        elif slot == "PER":
            value = rng.choice(pools["SURNAMES"]) + rng.choice(pools["GIVEN"])
        elif slot == "ORG" and rng.random() < 0.3:
            value = rng.choice(pools["PROVINCIAL"]) + rng.choice(ORG_SUFFIXES)
        else:
            value = rng.choice(pools[{"LOC": "PLACES", "ORG": "ORGS"}[slot]])
        if slot in ("PER", "LOC", "ORG"):
            spans.append((len(text), len(text) + len(value), slot))
        text += value
    return text + rest, spans


def bmes(text: str, spans: list[tuple[int, int, str]]) -> str:
    tags = ["O"] * len(text)
    for start, end, label in spans:
        if end - start == 1:
            tags[start] = f"S-{label}"
        else:
            tags[start:end] = [f"B-{label}"] + [f"M-{label}"] * (end - start - 2) + [f"E-{label}"]
    return "".join(f"{char} {tag}\n" for char, tag in zip(text, tags)) + "\n"


def make(out_dir: Path, train_size: int = 1200, dev_size: int = 300, seed: int = 19) -> None:
    rng = random.Random(seed)
    seen, held_out = {}, {}
    for name, items in (("SURNAMES", SURNAMES), ("GIVEN", GIVEN), ("PLACES", PLACES), ("ORGS", ORGS),
                        ("PROVINCIAL", PROVINCIAL)):
        seen[name], held_out[name] = split_held_out(items, rng)
    for split, size in (("train", train_size), ("dev", dev_size)):
        lines = []
        for _ in range(size):
            pools = held_out if split == "dev" and rng.random() < 0.2 else seen
            lines.append(bmes(*fill(rng.choice(TEMPLATES), rng, pools)))
        (out_dir / f"ner-sample-{split}.txt").write_text("".join(lines), encoding="utf-8")


if __name__ == "__main__":
    make(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "sbert_cli" / "resources")
