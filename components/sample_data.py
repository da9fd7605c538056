"""Built-in, seeded Chinese e-commerce product-search data: what the demo trains on.

The project ships no third-party data, so this module writes its own: shopper queries
(``适合夏天穿的显瘦连衣裙``) with 1-3 positive product listings each, and a corpus of every
positive plus distractors. It is built to be *hard for lexical matching*:

* Queries state needs the way shoppers type them; positives state the matching product
  attributes the way shop listings do (夏天 → 雪纺/冰丝/透气/薄款, 保暖 → 加绒/羽绒/羊毛,
  送老人 → 中老年, 宝宝 → 婴儿, 防水 → 防泼水/户外冲锋 ...), so they share few characters.
* Distractors share words but not meaning: the same product with one need swapped
  (a 加绒 dress for a summer query) written with the query's own words, an accessory that
  names the product (连衣裙防尘挂袋), another product with the same need (夏天用的风扇), and
  a neighbouring product type with the same attributes (a 冰丝 T恤 for a summer dress).

Relevance is explicit, not incidental: a listing is relevant to a query exactly when it
is the query's product type and states every attribute the query asks for. The generator
checks every listing it writes against every query, so a positive is relevant to its own
query only and a distractor to none; a query's positives are never another query's
(a 9:1 split by query leaves no passage in both splits).

Everything is drawn from one ``random.Random(seed)`` and nothing iterates a ``set`` of
strings, so the same :class:`SampleDataConfig` writes byte-identical files.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from components.config_values import check_config
from components.jsonl_files import write_jsonl

logger = logging.getLogger(__name__)

ROWS_FILENAME = "rows.jsonl"
CORPUS_FILENAME = "corpus.jsonl"
PASSAGE_ID_FORMAT = "p{:06d}"

# --------------------------------------------------------------------------------------
# Configuration and results
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleDataConfig:
    """How much sample data to generate, and from which seed.

    Attributes:
        seed: seeds the single random generator; the same config gives byte-identical files.
        num_queries: number of queries (training rows). The vocabulary supports about
            2,000 distinct needs; asking for more raises ``ValueError``.
        distractors_per_query: mean number of distractor passages written per query
            (the integer part for every query, plus one more with the fractional part's
            probability). Other queries' positives are further, easier negatives.
        max_positives_per_query: each query gets between 1 and this many (at most 3)
            positive listings.
    """

    seed: int = 20260101
    num_queries: int = 1500
    distractors_per_query: float = 3.0
    max_positives_per_query: int = 3

    def __post_init__(self) -> None:
        check_config(self)
        if self.num_queries < 1:
            raise ValueError(f"num_queries must be at least 1, got {self.num_queries}")
        if not (0.0 <= self.distractors_per_query <= 20.0):
            raise ValueError(f"distractors_per_query must be in [0, 20], got {self.distractors_per_query}")
        if not (1 <= self.max_positives_per_query <= len(POSITIVE_COUNT_WEIGHTS)):
            raise ValueError(
                f"max_positives_per_query must be in [1, {len(POSITIVE_COUNT_WEIGHTS)}], "
                f"got {self.max_positives_per_query}"
            )


@dataclass(frozen=True)
class SampleDataFiles:
    """Where :func:`generate_sample_data` wrote its files.

    Attributes:
        rows: JSONL training rows ``{"query": str, "pos": [str, ...]}`` (no ``neg``).
        corpus: JSONL passages ``{"id": "p000123", "text": str}``: every positive and every
            distractor, each text once.
    """

    rows: Path
    corpus: Path


@dataclass(frozen=True)
class SampleQuery:
    """One generated query and the ground truth behind it.

    Attributes:
        text: the query as a shopper types it.
        positives: its relevant listings, each also a corpus text.
        category: the product category (服装, 厨房用品, ...).
        product_type: key into :data:`PRODUCT_TYPES`.
        attributes: keys into :data:`ATTRIBUTES` the query asks for.
        template: the query template it was written with.
    """

    text: str
    positives: tuple[str, ...]
    category: str
    product_type: str
    attributes: tuple[str, ...]
    template: str


@dataclass(frozen=True)
class SampleDistractor:
    """A corpus passage that is relevant to no query.

    Attributes:
        text: the listing.
        kind: one of :data:`DISTRACTOR_KINDS`.
        query_index: index of the query it was written against.
        product_type: what the listing sells.
    """

    text: str
    kind: str
    query_index: int
    product_type: str


@dataclass(frozen=True)
class SampleDataset:
    """The generated data in memory, before it is written.

    Attributes:
        queries: in row order.
        distractors: in generation order.
        corpus: ``(id, text)`` pairs in file order (positives and distractors shuffled
            together, so an id says nothing about relevance).
    """

    queries: tuple[SampleQuery, ...]
    distractors: tuple[SampleDistractor, ...]
    corpus: tuple[tuple[str, str], ...]


# --------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------

SEASON, AUDIENCE, STYLE, PRICE, FUNCTION = "season", "audience", "style", "price", "function"
# A listing states at most one value of each of these; functions may stack.
SINGLE_VALUED_DIMENSIONS = (SEASON, AUDIENCE, STYLE, PRICE)
MAX_FUNCTIONS_PER_PRODUCT = 2


@dataclass(frozen=True)
class Attribute:
    """A need a shopper can ask for and a listing can state.

    Attributes:
        dimension: season, audience, style, price or function.
        query_phrases: shopper wording; ``{verb}`` becomes the product type's verb
            (穿/盖/用...), so 夏天{verb} reads 夏天穿 for a dress and 夏天用 for a fan.
        listing_phrases: listing wording, used where a product type has no override.
        descriptions: selling-point sentences a listing may add.
    """

    dimension: str
    query_phrases: tuple[str, ...]
    listing_phrases: tuple[str, ...]
    descriptions: tuple[str, ...] = ()


# Query phrases avoid the listing words on purpose (夏天 vs 雪纺/透气); where they share a
# character or two (孕期/孕妇) that is how real shoppers and shops write, and it gives
# lexical matching the partial credit that keeps the task learnable.
ATTRIBUTES: dict[str, Attribute] = {
    # --- seasons
    "summer": Attribute(
        SEASON,
        ("夏天{verb}", "适合夏天{verb}", "大热天{verb}", "天热{verb}", "三伏天{verb}", "夏天{verb}凉快"),
        ("透气", "薄款", "清凉", "凉感", "夏季款", "轻薄"),
        ("轻薄透气，闷热天气也清爽不黏身", "凉感面料，贴身不闷汗", "薄款设计，高温天也舒服"),
    ),
    "winter": Attribute(
        SEASON,
        ("冬天{verb}", "保暖", "怕冷的人{verb}", "零下也能{verb}", "冬天{verb}暖和", "东北过冬{verb}"),
        ("加绒", "加厚", "冬季款", "锁温", "防寒", "厚实"),
        ("内里加绒加厚，锁住体温不透风", "厚实锁温，寒潮来了也不怕", "防寒加厚，室外久待也暖"),
    ),
    "spring_autumn": Attribute(
        SEASON,
        ("春秋{verb}", "换季{verb}", "早晚温差大{verb}", "开春{verb}", "秋天{verb}"),
        ("春秋款", "早秋", "秋季新款", "过渡季"),
        ("春秋过渡季正合适，不厚不薄", "早晚温差大时刚刚好"),
    ),
    # --- audiences
    "women": Attribute(
        AUDIENCE,
        ("女生", "女士", "给老婆", "送女朋友", "女孩子"),
        ("女", "女款", "女式", "女神款"),
    ),
    "men": Attribute(
        AUDIENCE,
        ("男生", "男士", "给老公", "送男朋友", "男的"),
        ("男", "男款", "男式", "商务男"),
    ),
    "kids": Attribute(
        AUDIENCE,
        ("小孩", "孩子", "给儿子", "给闺女", "上小学的孩子", "小朋友"),
        ("儿童", "童款", "中大童", "3-12岁", "男童女童"),
        ("儿童专属设计，安全无异味",),
    ),
    "baby": Attribute(
        AUDIENCE,
        ("宝宝", "给宝宝", "刚出生的宝宝", "小月龄宝宝", "新生宝宝"),
        ("婴儿", "婴幼儿", "新生儿", "0-3岁", "母婴级"),
        ("母婴级标准，婴幼儿可放心使用",),
    ),
    "pregnant": Attribute(
        AUDIENCE,
        ("怀孕了", "孕期", "准妈妈", "怀孕五个月", "二胎妈妈"),
        ("孕妇", "孕产妇", "哺乳期", "月子", "孕妈"),
        ("孕产妇可用，温和无负担",),
    ),
    "elderly": Attribute(
        AUDIENCE,
        ("送老人", "给爸妈", "给爷爷奶奶", "老年人", "送长辈", "五六十岁"),
        ("中老年", "爸妈款", "适老", "长辈款"),
        ("专为中老年设计，用着省心",),
    ),
    "student": Attribute(
        AUDIENCE,
        ("学生党", "上学{verb}", "大学生", "住宿舍", "高中生"),
        ("校园", "宿舍", "青少年", "开学季", "学生款"),
    ),
    "plus_size": Attribute(
        AUDIENCE,
        ("微胖", "胖妹妹", "200斤能{verb}", "身材胖", "大体重"),
        ("大码", "加肥加大", "宽松版型", "胖mm"),
    ),
    # --- styles
    "date": Attribute(
        STYLE,
        ("约会{verb}", "温柔风", "仙一点", "见男朋友{verb}", "拍照好看"),
        ("法式", "碎花", "泡泡袖", "方领", "仙女"),
    ),
    "commute": Attribute(
        STYLE,
        ("上班{verb}", "职场", "面试{verb}", "办公室{verb}", "见客户{verb}"),
        ("通勤", "OL", "气质", "职业", "商务"),
    ),
    "vacation": Attribute(
        STYLE,
        ("去三亚{verb}", "旅游拍照{verb}", "出去玩{verb}", "去云南{verb}", "海岛游{verb}"),
        ("度假风", "沙滩", "海边", "波西米亚", "民族风"),
    ),
    "sporty": Attribute(
        STYLE,
        ("健身{verb}", "跑步{verb}", "打球{verb}", "去健身房{verb}", "运动时{verb}"),
        ("运动", "速干", "弹力", "排汗", "训练"),
    ),
    "wedding": Attribute(
        STYLE,
        ("结婚用", "婚房", "新婚", "送新人", "结婚送礼"),
        ("婚庆", "大红", "中式刺绣", "龙凤", "喜庆"),
    ),
    "cute": Attribute(
        STYLE,
        ("可爱", "少女心", "萌一点", "好看的", "有趣一点"),
        ("卡通", "奶油风", "ins风", "小熊", "草莓", "插画"),
    ),
    "minimalist": Attribute(
        STYLE,
        ("简单大方", "素一点", "性冷淡风", "不花哨", "低调"),
        ("纯色", "简约", "北欧", "日式", "无印风"),
    ),
    # --- price
    "budget": Attribute(
        PRICE,
        ("便宜", "性价比高", "不贵", "预算有限", "几十块"),
        ("特价", "9.9包邮", "工厂直销", "清仓", "实惠装"),
    ),
    "premium": Attribute(
        PRICE,
        ("好一点的", "贵点没关系", "品质好", "质量最好", "不差钱"),
        ("轻奢", "大牌", "进口", "旗舰款", "高端"),
    ),
    # --- functions
    "gift": Attribute(
        FUNCTION,
        ("送礼", "送人", "过年送礼", "拿得出手", "生日礼物"),
        ("礼盒装", "礼品", "高档礼盒", "节日礼物", "送礼佳品"),
    ),
    "anti_dandruff": Attribute(
        FUNCTION,
        ("头皮屑多", "头痒", "去头屑"),
        ("去屑", "止痒", "ZPT", "头皮护理"),
    ),
    "hair_loss": Attribute(
        FUNCTION,
        ("掉头发", "脱发", "发际线高", "头发稀"),
        ("防脱", "生姜", "固发", "育发"),
    ),
    "quick_dry": Attribute(
        FUNCTION,
        ("头发多", "吹得快", "头发长"),
        ("高速", "大风力", "11万转", "速干"),
    ),
    "hair_care": Attribute(
        FUNCTION,
        ("不伤头发", "吹完不毛躁", "头发干枯"),
        ("负离子", "护发", "恒温", "柔顺"),
    ),
    "slimming": Attribute(
        FUNCTION,
        ("显瘦", "遮肉", "显高", "藏肉", "小个子{verb}"),
        ("收腰", "高腰", "A字", "垂感", "修身"),
        ("修饰身形，显高显瘦", "拉长比例，不挑身材"),
    ),
    "waterproof": Attribute(
        FUNCTION,
        ("防水", "下雨天能{verb}", "不怕淋雨", "防雨", "雨天{verb}"),
        ("防泼水", "户外冲锋", "防暴雨", "涂层"),
        ("防泼水面料，小雨天水珠直接滑落", "接缝压胶，暴雨也不渗"),
    ),
    "windproof": Attribute(
        FUNCTION,
        ("防风", "风大{verb}", "骑车{verb}", "海边风大"),
        ("挡风", "高领", "收口", "防风面料"),
        ("立领收口设计，冷风灌不进",),
    ),
    "antislip": Attribute(
        FUNCTION,
        ("不打滑", "防滑", "雨天走路不滑", "路滑也不怕", "瓷砖地不滑"),
        ("橡胶大底", "耐磨底", "抓地", "防滑纹"),
        ("防滑纹理，湿滑地面也稳当",),
    ),
    "comfy_walk": Attribute(
        FUNCTION,
        ("走路不累", "站一天不累", "走远路", "脚疼", "逛街{verb}"),
        ("缓震", "软底", "气垫", "踩屎感"),
        ("缓震中底，久走不累脚",),
    ),
    "fast_charge": Attribute(
        FUNCTION,
        ("充电快", "快充", "十分钟充一半", "赶时间充电"),
        ("PD20W", "闪充", "22.5W", "超级快充", "双向快充"),
        ("支持PD协议，半小时回血50%",),
    ),
    "portable": Attribute(
        FUNCTION,
        ("方便带出门", "出差带", "小巧", "放口袋", "随身带"),
        ("迷你", "便携", "轻薄小巧", "口袋款"),
        ("小巧轻便，包里口袋都放得下",),
    ),
    "large_capacity": Attribute(
        FUNCTION,
        ("能装", "容量大", "装得多", "东西多", "一次装够"),
        ("大容量", "加大", "多隔层", "超大号"),
    ),
    "flight_ok": Attribute(
        FUNCTION,
        ("能带上飞机", "坐飞机", "过安检"),
        ("3C认证", "民航可携带", "登机款"),
    ),
    "quiet": Attribute(
        FUNCTION,
        ("声音小", "不吵", "晚上睡觉{verb}", "不影响睡觉", "安静"),
        ("静音", "低噪", "25分贝", "夜间模式"),
        ("声音很轻，夜里也不吵人",),
    ),
    "remote": Attribute(
        FUNCTION,
        ("躺床上就能调", "能遥控", "不用起身"),
        ("遥控", "智能定时", "APP控制", "WiFi联网"),
    ),
    "energy_saving": Attribute(
        FUNCTION,
        ("省电", "电费低", "耗电少"),
        ("节能", "变频", "一级能效", "低功耗"),
    ),
    "bathroom": Attribute(
        FUNCTION,
        ("浴室{verb}", "洗澡时{verb}", "卫生间{verb}"),
        ("IPX4", "壁挂", "防溅水", "淋浴间"),
    ),
    "nonstick": Attribute(
        FUNCTION,
        ("不粘锅", "煎蛋不粘", "不糊底", "新手做饭", "少放油"),
        ("不粘", "麦饭石色", "涂层", "少油烟", "易清洗"),
        ("不粘不糊，清洗省事",),
    ),
    "induction": Attribute(
        FUNCTION,
        ("电磁炉能{verb}", "燃气灶都能{verb}", "各种灶都能{verb}"),
        ("全灶通用", "复合底", "电磁炉通用"),
    ),
    "light_weight": Attribute(
        FUNCTION,
        ("不重", "单手能拿", "拿得动", "轻一点"),
        ("轻量", "轻便", "减重", "超轻"),
    ),
    "keep_warm": Attribute(
        FUNCTION,
        ("保温时间长", "能保温一天", "喝热水", "热水一天不凉"),
        ("长效保温", "真空", "12小时保温", "316不锈钢", "双层真空"),
        ("真空锁温，几个小时后还是热的",),
    ),
    "leak_proof": Attribute(
        FUNCTION,
        ("不漏水", "放包里不漏", "不洒", "倒过来不漏", "不漏汤"),
        ("密封", "防漏", "硅胶圈", "锁扣"),
        ("硅胶密封圈，横放竖放都不渗",),
    ),
    "microwave": Attribute(
        FUNCTION,
        ("能微波炉加热", "能热饭", "能进微波炉"),
        ("可微波", "耐高温", "玻璃", "PP材质"),
    ),
    "office_lunch": Attribute(
        FUNCTION,
        ("上班带饭", "打工人", "公司带饭"),
        ("上班族", "分隔", "带饭神器", "便当"),
    ),
    "anti_fall": Attribute(
        FUNCTION,
        ("摔不坏", "防摔", "经常摔手机", "手滑"),
        ("气囊", "四角防摔", "军工级", "全包边"),
    ),
    "noise_cancel": Attribute(
        FUNCTION,
        ("降噪", "地铁上{verb}", "隔音好", "坐飞机{verb}", "嘈杂环境"),
        ("主动降噪", "ANC", "通透模式", "深度降噪"),
    ),
    "long_battery": Attribute(
        FUNCTION,
        ("续航久", "电量持久", "一天不用充", "待机长"),
        ("长续航", "30小时", "大电池", "超长待机"),
    ),
    "secure_fit": Attribute(
        FUNCTION,
        ("跑步{verb}不掉", "戴着不掉", "运动时不掉"),
        ("挂耳", "防汗", "耳翼", "运动款"),
    ),
    "low_latency": Attribute(
        FUNCTION,
        ("打游戏", "吃鸡", "不延迟", "声画同步"),
        ("低延迟", "电竞", "游戏模式"),
    ),
    "durable": Attribute(
        FUNCTION,
        ("不容易断", "耐用", "结实", "用久了不坏"),
        ("编织", "加粗", "尼龙", "耐弯折"),
    ),
    "long_length": Attribute(
        FUNCTION,
        ("躺着玩手机", "床上{verb}", "线长一点"),
        ("2米", "加长", "3米"),
    ),
    "mites": Attribute(
        FUNCTION,
        ("防螨", "鼻炎", "过敏体质", "尘螨过敏"),
        ("除螨", "抗菌", "A类", "抑菌"),
        ("抑菌除螨工艺，敏感体质也能安心",),
    ),
    "washable": Attribute(
        FUNCTION,
        ("能机洗", "好打理", "方便洗", "脏了能洗"),
        ("可水洗", "可机洗", "易打理", "耐洗"),
    ),
    "cervical": Attribute(
        FUNCTION,
        ("颈椎不好", "落枕", "护颈", "脖子疼", "睡醒脖子酸"),
        ("记忆棉", "慢回弹", "乳胶", "颈椎枕"),
        ("慢回弹贴合颈部曲线，托住脖子",),
    ),
    "extreme_cold": Attribute(
        FUNCTION,
        ("零下二三十度", "东北穿", "去哈尔滨", "极寒"),
        ("90白鹅绒", "充绒量300g", "高蓬松", "加厚款"),
        ("高蓬松鹅绒，极寒天气也扛得住",),
    ),
    "sharp": Attribute(
        FUNCTION,
        ("锋利", "切肉不费劲", "好切", "切得动"),
        ("高碳钢", "锻打", "德国工艺", "开刃"),
    ),
    "rustproof": Attribute(
        FUNCTION,
        ("不生锈", "不会锈", "防锈"),
        ("不锈钢", "一体成型", "氮化处理"),
    ),
    "bone": Attribute(
        FUNCTION,
        ("剁骨头", "砍骨", "剁排骨"),
        ("斩骨刀", "加厚刀背", "厚背"),
    ),
    "absorbent": Attribute(
        FUNCTION,
        ("不漏尿", "晚上{verb}", "一夜不换", "吸水好"),
        ("夜用", "干爽", "瞬吸", "12小时"),
    ),
    "anti_colic": Attribute(
        FUNCTION,
        ("防胀气", "不呛奶", "宝宝老吐奶"),
        ("排气阀", "宽口径", "仿母乳"),
    ),
    "unbreakable": Attribute(
        FUNCTION,
        ("摔不碎", "耐摔", "掉地上没事"),
        ("PPSU", "硅胶", "防摔"),
    ),
    "fold_light": Attribute(
        FUNCTION,
        ("能上飞机", "一键收车", "好收", "放后备箱"),
        ("可登机", "一键折叠", "伞车", "秒收"),
    ),
    "lie_flat": Attribute(
        FUNCTION,
        ("能躺能坐", "宝宝能睡", "可以躺"),
        ("可坐可躺", "双向", "平躺", "175度"),
    ),
    "shock": Attribute(
        FUNCTION,
        ("路不平", "颠簸", "石子路"),
        ("避震", "大轮", "减震", "全地形"),
    ),
    "twins": Attribute(
        FUNCTION,
        ("双胞胎", "俩宝", "两个娃"),
        ("双人", "双座", "二胎"),
    ),
    "gentle": Attribute(
        FUNCTION,
        ("敏感肌", "皮肤敏感", "不刺激", "容易过敏", "烂脸期"),
        ("温和", "无酒精", "氨基酸", "舒缓", "无香精"),
        ("温和不刺激，敏感肌肤也安心",),
    ),
    "oil_control": Attribute(
        FUNCTION,
        ("油皮", "出油多", "大油田", "T区油"),
        ("清爽", "控油", "哑光", "水杨酸"),
    ),
    "moisture": Attribute(
        FUNCTION,
        ("干皮", "补水", "起皮", "皮肤干", "换季干"),
        ("保湿", "玻尿酸", "滋润", "神经酰胺", "锁水"),
    ),
    "anti_aging": Attribute(
        FUNCTION,
        ("抗老", "有细纹", "30岁", "抗衰"),
        ("抗皱", "紧致", "胜肽", "视黄醇", "淡纹"),
    ),
    "sweatproof": Attribute(
        FUNCTION,
        ("军训", "跑步出汗", "防汗", "户外暴晒"),
        ("防水防汗", "SPF50+", "PA++++", "耐汗"),
    ),
    "deep_clean": Attribute(
        FUNCTION,
        ("黑头多", "毛孔粗大", "洗得干净", "闭口"),
        ("清洁毛孔", "去黑头", "泥膜", "深层清洁"),
    ),
    "long_lasting": Attribute(
        FUNCTION,
        ("不沾杯", "吃饭不掉", "一天不用补"),
        ("持久", "不易脱色", "雾面", "成膜"),
    ),
    "complexion": Attribute(
        FUNCTION,
        ("黄皮", "显白", "黑皮"),
        ("冷调", "提亮肤色", "豆沙色", "白开水色"),
    ),
    "quick_setup": Attribute(
        FUNCTION,
        ("搭起来简单", "一个人能搭", "新手露营", "懒人"),
        ("全自动", "速开", "免搭建", "一秒开"),
    ),
    "family_size": Attribute(
        FUNCTION,
        ("全家露营", "能住四个人", "一家人{verb}", "带娃露营"),
        ("3-4人", "加大空间", "两室一厅", "5-8人"),
    ),
    "sunshade": Attribute(
        FUNCTION,
        ("防晒", "遮阳", "能挡太阳", "不怕晒"),
        ("黑胶", "UPF50+", "隔热", "防紫外线"),
    ),
    "laptop": Attribute(
        FUNCTION,
        ("能放电脑", "装笔记本", "带电脑上班"),
        ("15.6寸电脑仓", "笔记本隔层", "电脑包"),
    ),
    "transparent": Attribute(
        FUNCTION,
        ("能看到里面", "一眼找到"),
        ("透明", "可视", "PEVA"),
    ),
    "moisture_proof": Attribute(
        FUNCTION,
        ("防潮", "梅雨天", "回南天", "不发霉"),
        ("防霉", "防尘密封", "干燥"),
    ),
    "long_coat": Attribute(
        FUNCTION,
        ("长款大衣也能装", "长衣服", "长款"),
        ("加长", "120cm", "大衣款"),
    ),
    "foldable": Attribute(
        FUNCTION,
        ("不用时能收起来", "能折叠", "不占地方"),
        ("可折叠", "折叠", "省空间"),
    ),
    "traceless": Attribute(
        FUNCTION,
        ("不留印子", "肩膀不鼓包", "不变形"),
        ("无痕", "宽肩", "防肩角"),
    ),
    "stain": Attribute(
        FUNCTION,
        ("去油渍", "领口发黄", "洗得干净"),
        ("强效去渍", "酵素", "深层洁净"),
    ),
    "fragrance": Attribute(
        FUNCTION,
        ("味道好闻", "留香", "香香的"),
        ("持久留香", "香氛", "花香"),
    ),
    "antibacterial": Attribute(
        FUNCTION,
        ("除菌", "杀菌", "内衣裤"),
        ("抑菌", "99%除菌", "除螨"),
    ),
}

# Needs that make no sense together in one product (a 可爱 cup for 送老人, 学生 + 上班带饭).
INCOMPATIBLE_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("kids", "commute"),
    ("kids", "date"),
    ("elderly", "date"),
    ("elderly", "cute"),
    ("men", "cute"),
    ("student", "office_lunch"),
    ("kids", "office_lunch"),
    ("student", "wedding"),
    ("kids", "wedding"),
    ("budget", "gift"),
    ("budget", "premium"),
)

# Swapping a need for its opposite gives the most misleading same-product distractor.
CONTRASTS: dict[str, tuple[str, ...]] = {
    "summer": ("winter",),
    "winter": ("summer",),
    "spring_autumn": ("winter", "summer"),
    "women": ("men",),
    "men": ("women",),
    "kids": ("elderly", "men", "women"),
    "baby": ("elderly",),
    "elderly": ("kids", "student", "baby"),
    "student": ("elderly",),
    "pregnant": ("student", "elderly"),
    "plus_size": ("student",),
    "date": ("commute", "sporty"),
    "commute": ("vacation", "sporty"),
    "vacation": ("commute",),
    "sporty": ("commute",),
    "cute": ("minimalist",),
    "minimalist": ("cute",),
    "budget": ("premium",),
    "premium": ("budget",),
}


@dataclass(frozen=True)
class ProductType:
    """A kind of product, how shoppers name it and how listings describe it.

    Attributes:
        category: shop category; :data:`CATEGORY_FILLERS` holds its filler words.
        verb: what one does with it (穿/盖/用...), substituted into query phrases.
        query_names: what shoppers call it.
        listing_names: what listings call it (some shared with ``query_names``).
        attributes: keys of :data:`ATTRIBUTES` this product can carry.
        listing_overrides: attribute key → listing phrases for this product where the
            generic ones do not fit (a summer dress is 雪纺, a summer quilt is 空调被).
        near: product types close enough to be convincing near-miss distractors but
            clearly a different thing to buy.
        share: relative share of queries; apparel dominates real search traffic.
    """

    category: str
    verb: str
    query_names: tuple[str, ...]
    listing_names: tuple[str, ...]
    attributes: tuple[str, ...]
    listing_overrides: Mapping[str, tuple[str, ...]]
    near: tuple[str, ...] = ()
    share: float = 1.0


CLOTHING, SHOES, BEDDING, KITCHEN, DIGITAL = "服装", "鞋靴", "家纺", "厨房用品", "数码配件"
OUTDOOR, BABY, BEAUTY, APPLIANCES, HOUSEHOLD = "户外运动", "母婴", "美妆个护", "生活电器", "家居日用"

PRODUCT_TYPES: dict[str, ProductType] = {
    # --- 服装
    "dress": ProductType(
        CLOTHING, "穿", ("连衣裙", "裙子"), ("连衣裙", "A字裙", "长裙", "衬衫裙", "中长裙"),
        ("summer", "winter", "spring_autumn", "pregnant", "plus_size", "elderly", "student",
         "date", "commute", "vacation", "slimming", "washable", "budget", "premium"),
        {
            "summer": ("雪纺", "冰丝", "透气", "薄款", "雪纺面料", "透气薄款", "夏装"),
            "winter": ("加绒", "加厚", "针织", "羊毛", "毛呢", "冬季"),
            "spring_autumn": ("长袖", "春秋款", "早秋", "针织"),
            "elderly": ("妈妈装", "中老年", "洋气妈妈款"),
            "slimming": ("收腰", "高腰", "显瘦", "垂感", "小个子"),
        },
        ("tshirt", "pants", "pajamas"),
        share=3.0,
    ),
    "tshirt": ProductType(
        CLOTHING, "穿", ("T恤", "体恤", "tee"), ("T恤", "圆领T恤", "打底衫", "上衣"),
        ("summer", "spring_autumn", "women", "men", "kids", "elderly", "student", "plus_size",
         "sporty", "commute", "washable", "budget", "premium"),
        {
            "summer": ("冰丝", "纯棉", "短袖", "透气", "薄款"),
            "spring_autumn": ("长袖", "打底", "春秋款"),
            "commute": ("POLO衫", "商务", "翻领"),
            "kids": ("童装", "儿童", "中大童"),
            "elderly": ("爸爸装", "中老年", "宽松款"),
        },
        ("hoodie", "dress", "pants"),
        share=2.0,
    ),
    "down_jacket": ProductType(
        CLOTHING, "穿", ("羽绒服", "面包服", "羽绒衣"), ("羽绒服", "羽绒外套", "面包服", "羽绒棉服"),
        ("women", "men", "kids", "elderly", "student", "plus_size", "extreme_cold", "slimming",
         "commute", "washable", "budget", "premium", "gift"),
        {
            "elderly": ("中老年", "爸妈款", "妈妈装"),
            "kids": ("童装", "儿童", "中大童"),
            "slimming": ("短款", "收腰", "轻薄", "修身"),
        },
        ("hoodie", "jacket", "boots"),
        share=1.5,
    ),
    "hoodie": ProductType(
        CLOTHING, "穿", ("卫衣", "帽衫"), ("卫衣", "连帽卫衣", "套头衫", "圆领卫衣"),
        ("winter", "spring_autumn", "women", "men", "kids", "student", "plus_size", "sporty",
         "budget", "premium"),
        {
            "winter": ("加绒", "加厚", "抓绒", "冬季"),
            "spring_autumn": ("薄款", "春秋款", "纯棉"),
            "kids": ("童装", "儿童", "中大童"),
        },
        ("tshirt", "down_jacket", "pants"),
    ),
    "pants": ProductType(
        CLOTHING, "穿", ("裤子", "长裤"), ("裤子", "长裤", "休闲裤", "直筒裤", "阔腿裤"),
        ("summer", "winter", "women", "men", "elderly", "pregnant", "plus_size", "kids",
         "slimming", "commute", "sporty", "budget", "premium"),
        {
            "summer": ("冰丝", "薄款", "垂感", "凉感", "透气"),
            "winter": ("加绒", "加厚", "抓绒", "冬季"),
            "pregnant": ("托腹", "孕妇", "可调节腰围"),
            "elderly": ("中老年", "松紧腰", "爸妈款"),
            "slimming": ("高腰", "显腿长", "直筒", "收腹"),
            "commute": ("西裤", "通勤", "九分"),
            "sporty": ("运动裤", "束脚", "速干"),
        },
        ("dress", "tshirt", "pajamas"),
        share=1.5,
    ),
    "pajamas": ProductType(
        CLOTHING, "穿", ("睡衣", "家居服"), ("睡衣", "家居服", "睡衣套装", "居家服"),
        ("summer", "winter", "spring_autumn", "women", "men", "kids", "pregnant", "elderly",
         "washable", "cute", "budget", "premium"),
        {
            "summer": ("冰丝", "莫代尔", "薄款", "短袖"),
            "winter": ("珊瑚绒", "法兰绒", "加厚", "夹棉"),
            "pregnant": ("月子服", "哺乳", "孕妇"),
            "kids": ("儿童", "亲子", "男童女童"),
        },
        ("dress", "tshirt", "quilt"),
    ),
    "shirt": ProductType(
        CLOTHING, "穿", ("衬衫", "衬衣"), ("衬衫", "衬衣", "翻领衬衫", "上衣"),
        ("summer", "spring_autumn", "women", "men", "elderly", "student", "plus_size",
         "commute", "date", "vacation", "slimming", "washable", "budget", "premium"),
        {
            "summer": ("短袖", "冰丝", "天丝", "薄款", "透气"),
            "spring_autumn": ("长袖", "春秋款", "早秋"),
            "commute": ("商务", "职业", "白衬衫", "正装"),
            "washable": ("免烫", "可机洗", "易打理"),
            "date": ("法式", "小清新", "温柔感", "复古"),
            "elderly": ("中老年", "爸爸装", "妈妈装"),
        },
        ("tshirt", "sweater", "dress"),
        share=1.5,
    ),
    "sweater": ProductType(
        CLOTHING, "穿", ("毛衣", "针织衫"), ("毛衣", "针织衫", "打底毛衣", "套头毛衣"),
        ("winter", "spring_autumn", "women", "men", "elderly", "kids", "student", "plus_size",
         "commute", "date", "slimming", "washable", "budget", "premium", "gift"),
        {
            "winter": ("加厚", "羊毛", "羊绒", "高领", "粗针"),
            "spring_autumn": ("薄款", "春秋款", "早秋", "细针"),
            "elderly": ("中老年", "爸爸装", "妈妈装"),
            "kids": ("童装", "儿童", "中大童"),
        },
        ("hoodie", "shirt", "down_jacket"),
    ),
    # --- 鞋靴
    "sneakers": ProductType(
        SHOES, "穿", ("运动鞋", "跑鞋", "球鞋"), ("运动鞋", "跑步鞋", "休闲鞋", "老爹鞋", "板鞋"),
        ("summer", "winter", "women", "men", "kids", "elderly", "student", "antislip", "comfy_walk",
         "budget", "premium"),
        {
            "summer": ("网面", "透气", "飞织", "镂空"),
            "winter": ("加绒", "棉鞋", "加厚内里"),
            "elderly": ("健步鞋", "中老年", "妈妈鞋"),
            "kids": ("童鞋", "儿童", "魔术贴"),
        },
        ("slippers", "boots"),
        share=1.5,
    ),
    "boots": ProductType(
        SHOES, "穿", ("靴子", "短靴", "雪地靴"), ("短靴", "靴子", "马丁靴", "切尔西靴"),
        ("women", "men", "kids", "elderly", "antislip", "comfy_walk", "commute", "waterproof", "slimming",
         "budget", "premium"),
        {
            "waterproof": ("防泼水", "防水皮面", "雨雪天"),
            "commute": ("通勤", "粗跟", "气质"),
            "elderly": ("中老年", "妈妈棉鞋", "爸妈款"),
            "slimming": ("显腿长", "内增高", "尖头"),
            "kids": ("童鞋", "儿童", "中大童"),
        },
        ("sneakers", "slippers"),
    ),
    "sandals": ProductType(
        SHOES, "穿", ("凉鞋",), ("凉鞋", "罗马凉鞋", "包头凉鞋", "一字带凉鞋"),
        ("women", "men", "kids", "elderly", "pregnant", "antislip", "comfy_walk", "vacation",
         "commute", "slimming", "budget", "premium"),
        {
            "slimming": ("坡跟", "厚底", "显腿长"),
            "commute": ("粗跟", "气质", "通勤"),
            "kids": ("童鞋", "儿童", "包头防踢"),
            "elderly": ("中老年", "妈妈鞋", "软底"),
        },
        ("sneakers", "hiking"),
    ),
    "slippers": ProductType(
        SHOES, "穿", ("拖鞋", "家居鞋"), ("拖鞋", "家居拖鞋", "室内拖鞋"),
        ("summer", "winter", "women", "men", "kids", "elderly", "pregnant", "antislip", "comfy_walk", "quiet",
         "budget", "premium"),
        {
            "summer": ("凉拖", "EVA", "夏季", "速干"),
            "winter": ("棉拖", "毛毛", "包跟", "加厚"),
            "comfy_walk": ("踩屎感", "厚底", "软底"),
            "quiet": ("静音", "软底无声"),
            "antislip": ("防滑", "浴室防滑", "防滑底"),
        },
        ("sneakers", "boots", "pajamas"),
    ),
    # --- 家纺
    "quilt": ProductType(
        BEDDING, "盖", ("被子", "被芯"), ("被子", "被芯", "双人被", "被褥"),
        ("summer", "winter", "spring_autumn", "kids", "student", "elderly", "mites", "washable", "wedding",
         "budget", "premium", "gift"),
        {
            "summer": ("空调被", "夏凉被", "冰丝", "凉感", "薄被"),
            "winter": ("冬被", "加厚", "羊毛被", "羽绒被", "蚕丝被"),
            "spring_autumn": ("四季被", "春秋被", "子母被"),
            "kids": ("儿童被", "幼儿园", "卡通"),
            "student": ("宿舍", "单人", "学生被"),
            "wedding": ("喜被", "大红", "婚庆"),
        },
        ("bedsheet", "pillow", "pajamas"),
    ),
    "bedsheet": ProductType(
        BEDDING, "用", ("四件套", "床单被套", "床上用品"), ("四件套", "床单被套", "床笠款", "床品套件"),
        ("summer", "winter", "kids", "student", "wedding", "minimalist", "cute", "washable", "mites",
         "budget", "premium", "gift"),
        {
            "summer": ("冰丝", "天丝", "凉感", "莫代尔"),
            "winter": ("牛奶绒", "珊瑚绒", "法兰绒", "加厚"),
            "student": ("宿舍三件套", "单人床", "0.9m"),
            "kids": ("儿童", "卡通", "纯棉A类"),
            "wedding": ("婚庆", "大红", "龙凤刺绣", "喜庆"),
            "cute": ("卡通", "小熊", "奶油风"),
        },
        ("quilt", "pillow"),
    ),
    "pillow": ProductType(
        BEDDING, "用", ("枕头", "枕芯"), ("枕头", "枕芯", "单人枕", "一对装枕头"),
        ("summer", "kids", "student", "elderly", "pregnant", "cervical", "mites", "washable",
         "budget", "premium", "gift"),
        {
            "summer": ("冰丝", "凉感", "荞麦"),
            "pregnant": ("孕妇枕", "U型", "侧睡"),
            "kids": ("儿童枕", "幼儿园", "卡通"),
            "elderly": ("中老年", "低枕"),
        },
        ("quilt", "bedsheet"),
    ),
    "mat": ProductType(
        BEDDING, "用", ("凉席", "席子"), ("凉席", "冰丝席", "藤席", "凉席三件套"),
        ("kids", "baby", "student", "elderly", "pregnant", "washable", "foldable", "mites",
         "budget", "premium"),
        {
            "student": ("宿舍", "学生", "0.9m单人"),
            "mites": ("防霉", "抑菌", "除螨"),
            "baby": ("婴儿", "新生儿", "母婴级"),
            "kids": ("儿童", "幼儿园", "卡通"),
        },
        ("bedsheet", "quilt", "pillow"),
    ),
    # --- 厨房用品
    "wok": ProductType(
        KITCHEN, "用", ("炒锅", "炒菜锅"), ("炒锅", "炒菜锅", "平底锅", "煎锅"),
        ("student", "nonstick", "induction", "light_weight", "rustproof", "budget", "premium", "gift"),
        {
            "light_weight": ("轻量", "轻便", "单手锅"),
            "student": ("小号", "一人食", "宿舍"),
            "rustproof": ("316不锈钢", "氮化", "防锈处理"),
        },
        ("knife", "lunchbox", "cup"),
    ),
    "cup": ProductType(
        KITCHEN, "用", ("保温杯", "水杯", "杯子"), ("保温杯", "保温水杯", "焖烧杯", "随行杯"),
        ("women", "men", "kids", "elderly", "student", "keep_warm", "leak_proof", "large_capacity",
         "portable", "cute", "budget", "premium", "gift"),
        {
            "kids": ("儿童", "吸管", "带背带"),
            "elderly": ("中老年", "茶水分离", "父母款"),
            "large_capacity": ("1000ml", "大肚杯", "吨吨桶", "大容量"),
            "portable": ("迷你", "口袋杯", "小巧", "便携"),
        },
        ("lunchbox", "wok"),
    ),
    "lunchbox": ProductType(
        KITCHEN, "用", ("饭盒", "便当盒"), ("饭盒", "便当盒", "餐盒", "保鲜盒"),
        ("kids", "student", "office_lunch", "microwave", "leak_proof", "keep_warm", "large_capacity", "cute",
         "budget", "premium"),
        {
            "keep_warm": ("保温饭盒", "真空", "多层保温"),
            "student": ("食堂", "多层", "校园"),
            "kids": ("儿童", "卡通", "分格"),
        },
        ("cup", "wok"),
    ),
    "knife": ProductType(
        KITCHEN, "用", ("菜刀", "刀"), ("菜刀", "厨房刀", "家用菜刀", "中式菜刀"),
        ("sharp", "rustproof", "bone", "light_weight", "durable", "budget", "premium", "gift"),
        {
            "light_weight": ("轻薄", "轻巧", "女士款"),
            "durable": ("一体钢", "耐磨", "不卷刃"),
        },
        ("wok", "lunchbox"),
    ),
    # --- 数码配件
    "powerbank": ProductType(
        DIGITAL, "用", ("充电宝", "移动电源"), ("充电宝", "移动电源", "磁吸充电宝"),
        ("women", "student", "fast_charge", "portable", "large_capacity", "flight_ok", "cute",
         "budget", "premium", "gift"),
        {
            "large_capacity": ("20000毫安", "大容量", "30000mAh"),
            "portable": ("迷你", "轻薄小巧", "口袋", "超薄"),
        },
        ("cable", "earphones", "phonecase"),
    ),
    "phonecase": ProductType(
        DIGITAL, "用", ("手机壳", "保护壳"), ("手机壳", "保护套", "手机套", "硅胶壳"),
        ("women", "men", "student", "anti_fall", "cute", "minimalist", "budget", "premium"),
        {
            "minimalist": ("纯色", "透明", "简约", "素壳"),
            "men": ("男款", "商务", "碳纤维"),
        },
        ("cable", "powerbank"),
    ),
    "earphones": ProductType(
        DIGITAL, "用", ("耳机", "蓝牙耳机"), ("蓝牙耳机", "无线耳机", "耳机", "真无线耳机"),
        ("women", "men", "student", "noise_cancel", "long_battery", "secure_fit", "low_latency", "cute",
         "budget", "premium", "gift"),
        {},
        ("powerbank", "cable"),
    ),
    "cable": ProductType(
        DIGITAL, "用", ("数据线", "充电线"), ("数据线", "充电线", "快充线", "Type-C线"),
        ("fast_charge", "durable", "long_length", "cute", "budget", "premium"),
        {"fast_charge": ("6A", "100W", "超级快充", "PD快充")},
        ("powerbank", "phonecase"),
    ),
    # --- 户外运动
    "jacket": ProductType(
        OUTDOOR, "穿", ("冲锋衣", "登山服"), ("冲锋衣", "户外冲锋衣", "登山服", "硬壳冲锋衣"),
        ("winter", "spring_autumn", "women", "men", "kids", "waterproof", "windproof", "light_weight",
         "budget", "premium"),
        {
            "winter": ("三合一", "抓绒内胆", "加厚", "羽绒内胆"),
            "spring_autumn": ("单层", "薄款", "春秋款"),
            "waterproof": ("防泼水", "防暴雨", "压胶", "涂层"),
            "light_weight": ("轻量", "可收纳", "超轻"),
            "kids": ("儿童", "童装", "中大童"),
        },
        ("backpack", "tent", "hiking"),
    ),
    "tent": ProductType(
        OUTDOOR, "用", ("帐篷", "露营帐篷"), ("帐篷", "露营帐篷", "野营帐篷", "天幕帐篷"),
        ("waterproof", "quick_setup", "family_size", "sunshade", "light_weight", "budget", "premium"),
        {
            "waterproof": ("PU3000+", "双层防雨", "防暴雨"),
            "light_weight": ("超轻", "徒步", "轻量"),
        },
        ("backpack", "jacket"),
    ),
    "backpack": ProductType(
        OUTDOOR, "背", ("背包", "双肩包", "登山包"), ("双肩包", "户外背包", "登山包", "旅行包", "背包"),
        ("women", "men", "student", "kids", "waterproof", "large_capacity", "light_weight", "laptop",
         "budget", "premium"),
        {
            "kids": ("儿童", "护脊", "减负"),
            "student": ("书包", "校园", "初中生"),
            "large_capacity": ("40L", "60L", "扩容", "多隔层"),
            "waterproof": ("防泼水", "防雨罩", "涂层"),
        },
        ("jacket", "tent", "lunchbox"),
    ),
    "hiking": ProductType(
        OUTDOOR, "穿", ("登山鞋", "徒步鞋", "爬山的鞋"), ("登山鞋", "徒步鞋", "户外鞋", "越野鞋"),
        ("summer", "winter", "women", "men", "kids", "waterproof", "antislip", "comfy_walk", "light_weight",
         "budget", "premium"),
        {
            "summer": ("透气", "网面", "速干", "溯溪"),
            "winter": ("加绒", "高帮", "棉"),
            "waterproof": ("GTX", "防水膜", "防泼水"),
            "antislip": ("Vibram大底", "抓地", "防滑"),
            "kids": ("童鞋", "儿童", "中大童"),
        },
        ("jacket", "backpack", "tent"),
    ),
    # --- 母婴
    "diaper": ProductType(
        BABY, "用", ("纸尿裤", "尿不湿"), ("纸尿裤", "拉拉裤", "尿裤", "成长裤"),
        ("baby", "elderly", "summer", "absorbent", "gentle", "budget", "premium"),
        {
            "summer": ("超薄", "透气", "夏季薄款"),
            "elderly": ("成人", "老人", "护理"),
            "baby": ("婴儿", "NB码", "新生儿"),
            "gentle": ("柔软", "亲肤", "弱酸"),
        },
        ("bottle", "stroller"),
    ),
    "bottle": ProductType(
        BABY, "用", ("奶瓶",), ("奶瓶", "奶瓶套装"),
        ("baby", "anti_colic", "unbreakable", "large_capacity", "budget", "premium"),
        {
            "baby": ("新生儿", "0-6个月", "小月龄"),
            "large_capacity": ("300ml", "大容量", "大号"),
        },
        ("diaper", "cup"),
    ),
    "stroller": ProductType(
        BABY, "用", ("婴儿车", "推车", "宝宝推车"), ("婴儿推车", "遛娃神器", "婴儿车", "手推车"),
        ("fold_light", "lie_flat", "shock", "sunshade", "twins", "budget", "premium"),
        {"sunshade": ("全篷遮阳", "防紫外线", "UPF50+")},
        ("diaper", "bottle"),
    ),
    "romper": ProductType(
        BABY, "穿", ("连体衣", "宝宝衣服", "爬服"), ("连体衣", "哈衣", "爬服", "包屁衣"),
        ("summer", "winter", "spring_autumn", "gentle", "washable", "cute", "budget", "premium"),
        {
            "summer": ("短袖", "纯棉薄款", "竹纤维", "透气"),
            "winter": ("加厚", "夹棉", "加绒"),
            "spring_autumn": ("长袖", "春秋款"),
            "gentle": ("A类", "纯棉", "无骨缝制", "亲肤"),
            "cute": ("卡通", "小熊", "兔子", "萌趣"),
        },
        ("pajamas", "diaper"),
    ),
    # --- 美妆个护
    "cream": ProductType(
        BEAUTY, "用", ("面霜", "乳液"), ("面霜", "乳霜", "精华霜", "霜"),
        ("summer", "men", "pregnant", "student", "gentle", "oil_control", "moisture", "anti_aging",
         "budget", "premium", "gift"),
        {
            "summer": ("夏季", "轻薄水感", "啫喱质地"),
            "pregnant": ("孕妇可用", "孕期", "哺乳期可用"),
            "men": ("男士", "男款"),
            "student": ("学生", "青春", "校园"),
        },
        ("cleanser", "sunscreen"),
    ),
    "sunscreen": ProductType(
        BEAUTY, "用", ("防晒霜", "防晒"), ("防晒霜", "防晒乳", "防晒喷雾", "隔离防晒"),
        ("kids", "pregnant", "men", "student", "gentle", "sweatproof", "oil_control", "vacation",
         "budget", "premium"),
        {
            "kids": ("儿童", "物理防晒", "温和配方"),
            "vacation": ("海边", "沙滩", "高倍"),
            "pregnant": ("孕妇可用", "孕期", "纯物理"),
        },
        ("cream", "cleanser"),
    ),
    "cleanser": ProductType(
        BEAUTY, "用", ("洗面奶", "洁面"), ("洗面奶", "洁面乳", "洁面泡沫", "洁面膏"),
        ("women", "men", "student", "pregnant", "gentle", "oil_control", "deep_clean", "moisture",
         "budget", "premium"),
        {
            "moisture": ("不紧绷", "保湿", "滋润"),
            "pregnant": ("孕妇可用", "孕期", "哺乳期可用"),
        },
        ("cream", "sunscreen"),
    ),
    "lipstick": ProductType(
        BEAUTY, "用", ("口红", "唇膏"), ("口红", "唇釉", "唇泥", "唇膏"),
        ("student", "date", "long_lasting", "moisture", "complexion", "cute", "budget", "premium", "gift"),
        {
            "moisture": ("水光", "镜面", "润唇", "滋润"),
            "student": ("学生", "校园", "小样"),
            "date": ("温柔", "奶茶色", "元气"),
        },
        ("cream", "cleanser"),
    ),
    "shampoo": ProductType(
        BEAUTY, "用", ("洗发水", "洗头膏"), ("洗发水", "洗发露", "洗发乳"),
        ("women", "men", "kids", "pregnant", "student", "oil_control", "anti_dandruff", "hair_loss",
         "moisture", "fragrance", "gentle", "budget", "premium"),
        {
            "oil_control": ("控油", "蓬松", "清爽"),
            "moisture": ("柔顺", "修护干枯", "顺滑"),
            "kids": ("儿童", "无泪配方", "3-12岁"),
            "pregnant": ("孕妇可用", "孕期", "哺乳期可用"),
        },
        ("cleanser", "cream"),
    ),
    # --- 生活电器
    "fan": ProductType(
        APPLIANCES, "用", ("风扇", "电风扇", "电扇"), ("风扇", "电风扇", "电扇"),
        ("baby", "student", "elderly", "quiet", "portable", "remote", "energy_saving", "budget", "premium"),
        {
            "portable": ("手持", "USB", "迷你", "挂脖"),
            "baby": ("母婴", "安全网罩", "儿童锁"),
            "student": ("宿舍", "床上", "夹子"),
            "elderly": ("大字按键", "语音播报", "中老年"),
        },
        ("heater", "humidifier"),
    ),
    "heater": ProductType(
        APPLIANCES, "用", ("取暖器", "暖风机", "电暖器"), ("取暖器", "电暖器", "暖风机", "电暖气"),
        ("baby", "elderly", "student", "quiet", "energy_saving", "bathroom", "remote", "budget", "premium"),
        {
            "baby": ("母婴", "防烫", "儿童锁"),
            "student": ("宿舍", "小功率", "桌面"),
            "elderly": ("大字按键", "倾倒断电", "中老年"),
        },
        ("fan", "humidifier"),
    ),
    "humidifier": ProductType(
        APPLIANCES, "用", ("加湿器",), ("加湿器", "空气加湿器", "香薰加湿器"),
        ("baby", "student", "quiet", "large_capacity", "portable", "remote", "budget", "premium", "gift"),
        {
            "large_capacity": ("4L", "大水箱", "大雾量"),
            "portable": ("USB", "迷你", "桌面", "车载"),
            "baby": ("母婴", "纯净水雾", "无菌"),
        },
        ("fan", "heater"),
    ),
    "rice_cooker": ProductType(
        APPLIANCES, "用", ("电饭煲", "电饭锅"), ("电饭煲", "电饭锅", "智能电饭煲"),
        ("student", "elderly", "large_capacity", "portable", "nonstick", "remote", "energy_saving",
         "budget", "premium", "gift"),
        {
            "large_capacity": ("5L", "4L", "大容量", "6-8人"),
            "portable": ("迷你", "1.2L", "一人食", "小型"),
            "nonstick": ("不粘内胆", "陶晶内胆", "易清洗"),
            "remote": ("预约", "APP控制", "WiFi联网"),
            "student": ("宿舍", "小功率", "学生"),
        },
        ("wok", "humidifier"),
    ),
    "hair_dryer": ProductType(
        APPLIANCES, "用", ("吹风机", "电吹风"), ("吹风机", "电吹风", "吹风筒"),
        ("women", "men", "student", "portable", "quiet", "quick_dry", "hair_care",
         "budget", "premium", "gift"),
        {
            "portable": ("折叠", "迷你", "便携", "旅行款"),
            "student": ("宿舍", "小功率", "学生"),
        },
        ("fan", "heater"),
    ),
    # --- 家居日用
    "garment_bag": ProductType(
        HOUSEHOLD, "用", ("防尘袋", "衣服收纳袋", "防尘罩"), ("防尘挂袋", "衣物防尘罩", "收纳挂袋", "衣服防尘袋"),
        ("student", "transparent", "moisture_proof", "long_coat", "washable", "budget", "premium"),
        {"student": ("宿舍", "学生", "多只装")},
        ("storage_box", "hanger"),
    ),
    "storage_box": ProductType(
        HOUSEHOLD, "用", ("收纳箱", "整理箱"), ("收纳箱", "整理箱", "储物箱", "收纳盒"),
        ("student", "kids", "large_capacity", "foldable", "transparent", "moisture_proof",
         "budget", "premium"),
        {
            "large_capacity": ("加大", "特大号", "100L"),
            "student": ("宿舍", "床底", "开学季"),
            "kids": ("玩具收纳", "儿童", "卡通"),
        },
        ("garment_bag", "hanger"),
    ),
    "hanger": ProductType(
        HOUSEHOLD, "用", ("衣架",), ("衣架", "衣服架", "挂衣架"),
        ("kids", "student", "antislip", "traceless", "foldable", "budget", "premium"),
        {
            "antislip": ("植绒", "浸塑", "防滑"),
            "kids": ("儿童", "小号", "婴儿衣架"),
            "student": ("宿舍", "20只装", "学生"),
        },
        ("garment_bag", "storage_box"),
    ),
    "detergent": ProductType(
        HOUSEHOLD, "用", ("洗衣液", "洗衣凝珠"), ("洗衣液", "洗衣凝珠", "洗护液", "洗衣露"),
        ("baby", "stain", "fragrance", "gentle", "antibacterial", "budget", "premium"),
        {
            "gentle": ("无荧光剂", "植物配方", "温和"),
            "baby": ("婴儿", "母婴", "新生儿"),
        },
        ("storage_box", "garment_bag"),
    ),
}


@dataclass(frozen=True)
class Accessory:
    """A product whose listing names another product as what it is for (连衣裙防尘挂袋).

    Attributes:
        product_type: the accessory's own key in :data:`PRODUCT_TYPES`.
        targets: product types it can name.
        templates: listing heads; ``{obj}`` becomes the query's own word for the target,
            so the accessory matches the query lexically while selling something else.
    """

    product_type: str
    targets: tuple[str, ...]
    templates: tuple[str, ...]


ACCESSORIES: tuple[Accessory, ...] = (
    Accessory("garment_bag", ("dress", "down_jacket", "jacket", "hoodie", "pajamas"),
              ("{obj}防尘挂袋", "{obj}收纳挂袋", "挂{obj}的防尘罩", "{obj}收纳袋")),
    Accessory("hanger", ("dress", "tshirt", "down_jacket", "pants", "hoodie", "romper"),
              ("{obj}专用衣架", "挂{obj}的衣架", "{obj}衣架")),
    Accessory("storage_box", ("quilt", "bedsheet", "down_jacket", "pillow", "earphones", "boots"),
              ("{obj}收纳箱", "装{obj}的整理箱", "{obj}收纳盒")),
    Accessory("detergent", ("down_jacket", "jacket", "romper", "quilt", "sneakers"),
              ("{obj}专用洗衣液", "{obj}清洗剂", "洗{obj}的洗护液")),
    Accessory("cable", ("powerbank", "earphones", "fan", "humidifier"),
              ("{obj}充电线", "{obj}数据线", "{obj}专用线")),
)

# Shop filler words: the noise real titles carry, none of which states a need.
CATEGORY_FILLERS: dict[str, tuple[str, ...]] = {
    CLOTHING: ("2026新款", "百搭", "高级感", "洋气", "设计感", "爆款"),
    SHOES: ("2026新款", "百搭", "休闲", "潮流", "舒适"),
    BEDDING: ("家用", "亲肤", "床上用品", "简约"),
    KITCHEN: ("家用", "厨房", "耐用", "加厚"),
    DIGITAL: ("适用苹果华为", "正品", "通用", "官方"),
    OUTDOOR: ("户外", "专业", "露营", "徒步"),
    BABY: ("母婴店同款", "正品", "囤货装", "宝妈推荐"),
    BEAUTY: ("官方正品", "旗舰店", "专柜同款", "正品保障"),
    APPLIANCES: ("家用", "正品", "顺丰包邮", "新款"),
    HOUSEHOLD: ("家用", "居家", "囤货装", "热销"),
}

# Generic selling points: attribute-free, so they add realism without changing relevance.
CATEGORY_DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    CLOTHING: ("版型经过多次打版，上身效果好", "做工细致，走线平整", "面料不起球不褪色"),
    SHOES: ("鞋型修饰脚型，久穿不变形", "做工扎实，开胶包退"),
    BEDDING: ("精梳工艺，洗后不起球", "包边细致，不跑棉"),
    KITCHEN: ("食品级材质，放心使用", "厨房常备好物"),
    DIGITAL: ("兼容主流机型", "多重安全保护，用着放心"),
    OUTDOOR: ("专业户外品牌品质", "细节做工经得起折腾"),
    BABY: ("独立包装，干净卫生", "宝妈回购率高"),
    BEAUTY: ("肤感轻盈好推开", "专柜同款，假一赔十"),
    APPLIANCES: ("整机质保一年", "操作简单，一键启动"),
    HOUSEHOLD: ("居家常备好物", "品质稳定，回购率高"),
}

PROMOTIONS = ("新品", "爆款", "官方正品", "热卖", "店长推荐", "品牌直营", "现货速发")

# Query templates by number of asked-for needs: {t} is the product word, {a} {b} {c} the
# shoppers' need phrases. Several shapes per size so no template is a giveaway.
QUERY_TEMPLATES: dict[int, tuple[str, ...]] = {
    1: ("{a}的{t}", "{a}{t}", "有没有{a}的{t}", "求推荐{a}的{t}", "{t} {a}", "想买{a}的{t}"),
    2: ("{a}的{t} {b}", "{a}{b}的{t}", "{t} {a} {b}", "有没有{a}的{t}，要{b}",
        "{a}的{t}推荐 {b}", "求一款{a}、{b}的{t}"),
    3: ("{a}{b}的{t} {c}", "{t} {a} {b} {c}", "求推荐{a}的{t}，要{b}，最好{c}", "{a}的{t} {b} {c}"),
}
# How many needs a query states: mostly two, which is how shoppers refine.
INTENT_SIZE_WEIGHTS: dict[int, float] = {1: 0.1, 2: 0.6, 3: 0.3}
# Weights for 1, 2, 3 positives per query (truncated at max_positives_per_query).
POSITIVE_COUNT_WEIGHTS = (0.45, 0.35, 0.2)

WRONG_ATTRIBUTE, ACCESSORY, SHARED_NEED, NEAR_TYPE = "wrong_attribute", "accessory", "shared_need", "near_type"
DISTRACTOR_KINDS = (WRONG_ATTRIBUTE, ACCESSORY, SHARED_NEED, NEAR_TYPE)
DISTRACTOR_KIND_WEIGHTS = (0.35, 0.2, 0.2, 0.25)
SHARED_NEED_DIMENSIONS = (SEASON, AUDIENCE, STYLE)

# Probabilities that shape how lexical the data is; together they set the BM25 baseline.
# Measured on the default config: BM25 (character 1+2-grams) MRR@10 0.21 (0.21-0.25 over
# seeds), an untuned multilingual-e5-small 0.38.
POSITIVE_USES_QUERY_NAME = 0.6      # a positive calls the product what the query does
POSITIVE_USES_QUERY_PHRASE = 0.35   # ... or states a need in shopper wording
DISTRACTOR_USES_QUERY_NAME = 0.6    # misleading listings echo the query's words
DISTRACTOR_USES_QUERY_PHRASE = 0.6
EXTRA_ATTRIBUTE_PROBABILITY = 0.35  # a listing states a need nobody asked for
SECOND_PHRASE_PROBABILITY = 0.35    # listings stack synonyms (透气 薄款)
PROMOTION_PROBABILITY = 0.2
FILLER_PROBABILITY = 0.6
DESCRIPTION_PROBABILITY = 0.5

MAX_TRIES = 40  # renderings tried for a positive before giving up on a text not yet written

# --------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------

_INCOMPATIBLE = frozenset(frozenset(pair) for pair in INCOMPATIBLE_ATTRIBUTES)


@dataclass(frozen=True)
class _Intent:
    """What a query asks for, before its positives and distractors exist."""

    product_type: str
    attributes: tuple[str, ...]
    phrases: tuple[str, ...]  # the raw query phrase chosen per attribute ({verb} unfilled)
    name: str
    text: str
    template: str


@dataclass(frozen=True)
class _ListingPlan:
    """A listing to render: what it sells, what it states, and in whose words."""

    product_type: str
    attributes: tuple[str, ...]
    lexical: Mapping[str, str] = field(default_factory=dict)  # attribute -> query phrase
    name: str | None = None
    head: str | None = None


def _valid_combination(product_type: str, attributes: Sequence[str]) -> bool:
    """At most one value per single-valued dimension, a few functions, no clashes."""
    allowed = PRODUCT_TYPES[product_type].attributes
    if any(key not in allowed for key in attributes) or len(set(attributes)) != len(attributes):
        return False
    dimensions = Counter(ATTRIBUTES[key].dimension for key in attributes)
    if any(dimensions[d] > 1 for d in SINGLE_VALUED_DIMENSIONS) or dimensions[FUNCTION] > MAX_FUNCTIONS_PER_PRODUCT:
        return False
    return not any(frozenset((a, b)) in _INCOMPATIBLE
                   for i, a in enumerate(attributes) for b in attributes[i + 1:])


class _RelevanceIndex:
    """Which queries a listing satisfies: same product type, every asked-for need stated."""

    def __init__(self) -> None:
        self._by_type: dict[str, list[tuple[int, frozenset[str]]]] = {}

    def add(self, query_index: int, product_type: str, attributes: Sequence[str]) -> None:
        self._by_type.setdefault(product_type, []).append((query_index, frozenset(attributes)))

    def matches(self, product_type: str, attributes: Sequence[str]) -> list[int]:
        stated = frozenset(attributes)
        return [index for index, asked in self._by_type.get(product_type, ()) if asked <= stated]


def _fill_verb(phrase: str, product_type: str) -> str:
    return phrase.replace("{verb}", PRODUCT_TYPES[product_type].verb)


def _weighted_choice(rng: random.Random, options: Sequence, weights: Sequence[float]):
    return rng.choices(list(options), weights=list(weights), k=1)[0]


def _need_sets(rng: random.Random, product_type: str) -> list[tuple[str, ...]]:
    """Every need set a query about ``product_type`` may ask for, in the order to use them.

    The sets form an antichain (none contains another): otherwise the positives of
    ``夏天穿的显瘦连衣裙`` would also be relevant to ``夏天穿的连衣裙``. All valid sets of 1-3
    needs are put in a random order weighted by :data:`INTENT_SIZE_WEIGHTS` and kept
    greedily, so the first ones are a fair sample and the list is as long as the
    vocabulary allows.
    """
    attributes = PRODUCT_TYPES[product_type].attributes
    candidates = [combo for size in INTENT_SIZE_WEIGHTS for combo in itertools.combinations(attributes, size)
                  if _valid_combination(product_type, combo)]
    # Weighted random order (Efraimidis-Spirakis): larger key first.
    keys = [rng.random() ** (1.0 / INTENT_SIZE_WEIGHTS[len(combo)]) for combo in candidates]
    ordered = [combo for _, combo in sorted(zip(keys, candidates), key=lambda pair: -pair[0])]
    kept: list[frozenset[str]] = []
    result: list[tuple[str, ...]] = []
    for combo in ordered:
        candidate = frozenset(combo)
        if any(candidate <= other or other <= candidate for other in kept):
            continue
        kept.append(candidate)
        combo = list(combo)
        rng.shuffle(combo)  # the order the query will state them in
        result.append(tuple(combo))
    return result


def _write_query(rng: random.Random, product_type: str, attributes: tuple[str, ...],
                 seen_queries: set[str]) -> _Intent | None:
    """The query text for a need set, or None when every try repeats an earlier query."""
    spec = PRODUCT_TYPES[product_type]
    phrases = tuple(rng.choice(ATTRIBUTES[key].query_phrases) for key in attributes)
    slots = dict(zip("abc", (_fill_verb(p, product_type) for p in phrases)))
    for _ in range(5):
        name = rng.choice(spec.query_names)
        template = rng.choice(QUERY_TEMPLATES[len(attributes)])
        # Some phrases already end in 的 (好看的); templates add another before the noun.
        text = template.format(t=name, **slots).replace("的的", "的")
        if text not in seen_queries:
            return _Intent(product_type, attributes, phrases, name, text, template)
    return None


def _sample_intents(rng: random.Random, num_queries: int) -> list[_Intent]:
    """``num_queries`` intents spread over the product types by share, in random order."""
    plans = {key: _need_sets(rng, key) for key in PRODUCT_TYPES}
    capacity = sum(len(plan) for plan in plans.values())
    if num_queries > capacity:
        raise ValueError(f"num_queries={num_queries} is more than the built-in vocabulary supports ({capacity})")
    positions = dict.fromkeys(plans, 0)
    tie_break = {key: rng.random() for key in plans}
    seen: set[str] = set()
    intents: list[_Intent] = []
    # Stride scheduling: the next query goes to the open type furthest below its share,
    # so shares hold at any size and a used-up type hands its turns to the others.
    while len(intents) < num_queries:
        open_types = [key for key in plans if positions[key] < len(plans[key])]
        if not open_types:
            raise ValueError(f"num_queries={num_queries} is more than the built-in vocabulary supports "
                             f"({len(intents)} distinct queries)")
        product_type = min(open_types, key=lambda key: ((positions[key] + 1) / PRODUCT_TYPES[key].share,
                                                        tie_break[key]))
        attributes = plans[product_type][positions[product_type]]
        positions[product_type] += 1
        intent = _write_query(rng, product_type, attributes, seen)
        if intent is not None:
            seen.add(intent.text)
            intents.append(intent)
    rng.shuffle(intents)
    return intents


def _listing_phrases(product_type: str, attribute: str) -> tuple[str, ...]:
    overrides = PRODUCT_TYPES[product_type].listing_overrides
    return overrides.get(attribute) or ATTRIBUTES[attribute].listing_phrases


def _render_listing(rng: random.Random, plan: _ListingPlan) -> str:
    """A shop listing for ``plan.product_type`` stating ``plan.attributes``.

    ``plan.lexical`` maps an attribute to a shopper phrase (``{verb}`` unfilled) that states
    it in the query's words instead of listing words; ``plan.name`` is the product word
    (a random listing name when None); ``plan.head`` a ready-made title head (an
    accessory's ``连衣裙防尘挂袋``) that replaces the name.
    """
    product_type, lexical, head = plan.product_type, plan.lexical, plan.head
    spec = PRODUCT_TYPES[product_type]
    order = list(plan.attributes)
    rng.shuffle(order)
    need_tokens: list[str] = []
    audience_tokens: list[str] = []
    price_tokens: list[str] = []
    shopper_tokens: set[str] = set()
    for key in order:
        if key in lexical:
            tokens = [_fill_verb(lexical[key], product_type)]
            shopper_tokens.update(tokens)
        else:
            options = list(_listing_phrases(product_type, key))
            count = 2 if len(options) > 1 and rng.random() < SECOND_PHRASE_PROBABILITY else 1
            tokens = rng.sample(options, count)
        dimension = ATTRIBUTES[key].dimension
        # Audience and price words stand apart in titles (碎花裙 女, 9.9包邮), never glued.
        {AUDIENCE: audience_tokens, PRICE: price_tokens}.get(dimension, need_tokens).extend(tokens)

    noun = head or plan.name or rng.choice(spec.listing_names)
    # Listings glue one or two need words onto the product noun (雪纺碎花裙) and list the
    # rest after it; shopper phrases read better joined with 的 (夏天用的风扇).
    glued = need_tokens[:rng.randint(0, min(2, len(need_tokens)))] if head is None else []
    rest = need_tokens[len(glued):]
    joiner = "的" if glued and glued[-1] in shopper_tokens and not glued[-1].endswith("的") else ""
    title_head = "".join(glued) + joiner + noun
    parts = [title_head]
    if audience_tokens:
        if rng.random() < 0.5:
            parts.insert(0, audience_tokens[0])
        else:
            parts.append(audience_tokens[0])
        parts.extend(audience_tokens[1:])
    parts.extend(rest)
    parts.extend(price_tokens)
    if rng.random() < FILLER_PROBABILITY:
        parts.append(rng.choice(CATEGORY_FILLERS[spec.category]))
    title = " ".join(parts)
    if rng.random() < PROMOTION_PROBABILITY:
        title = f"【{rng.choice(PROMOTIONS)}】{title}"

    if rng.random() < DESCRIPTION_PROBABILITY:
        sentences = [s for key in order if key not in lexical for s in ATTRIBUTES[key].descriptions]
        pool = sentences or list(CATEGORY_DESCRIPTIONS[spec.category])
        title = f"{title} {rng.choice(pool)}。"
    return title


def _extras(rng: random.Random, product_type: str, base: Sequence[str]) -> list[str]:
    """Unasked-for needs a listing also states, drawn per free dimension."""
    result = list(base)
    candidates = [k for k in PRODUCT_TYPES[product_type].attributes if k not in result]
    rng.shuffle(candidates)
    for key in candidates:
        if rng.random() < EXTRA_ATTRIBUTE_PROBABILITY and _valid_combination(product_type, result + [key]):
            result.append(key)
    return result


class _Corpus:
    """Texts written so far; every text appears once."""

    def __init__(self) -> None:
        self.texts: set[str] = set()

    def claim(self, text: str) -> bool:
        if text in self.texts:
            return False
        self.texts.add(text)
        return True


def _make_positive(rng: random.Random, query_index: int, intent: _Intent, index: _RelevanceIndex,
                   corpus: _Corpus) -> str | None:
    """A new listing relevant to query ``query_index`` and no other, or None."""
    for _ in range(MAX_TRIES):
        attributes = _extras(rng, intent.product_type, intent.attributes)
        # Drop unasked-for needs until the listing answers this query only; the asked-for
        # set alone always does, since no query's set contains another's.
        while index.matches(intent.product_type, attributes) != [query_index]:
            attributes.pop()
        lexical = {key: rng.choice(ATTRIBUTES[key].query_phrases)
                   for key in intent.attributes if rng.random() < POSITIVE_USES_QUERY_PHRASE}
        name = intent.name if rng.random() < POSITIVE_USES_QUERY_NAME else None
        text = _render_listing(rng, _ListingPlan(intent.product_type, tuple(attributes), lexical, name))
        if corpus.claim(text):
            return text
    return None


def _echo(rng: random.Random, intent: _Intent, keys: Sequence[str]) -> dict[str, str]:
    """The query's own phrases for ``keys``, each kept with the echo probability."""
    phrase_of = dict(zip(intent.attributes, intent.phrases))
    return {key: phrase_of[key] for key in keys
            if key in phrase_of and ATTRIBUTES[key].dimension != PRICE
            and rng.random() < DISTRACTOR_USES_QUERY_PHRASE}


def _wrong_attribute(rng: random.Random, intent: _Intent, index: _RelevanceIndex) -> _ListingPlan | None:
    """Same product, one asked-for need swapped (preferably for its opposite)."""
    spec = PRODUCT_TYPES[intent.product_type]
    swaps = list(intent.attributes)
    rng.shuffle(swaps)
    for dropped in swaps:
        dimension = ATTRIBUTES[dropped].dimension
        same_dimension = [k for k in spec.attributes
                          if ATTRIBUTES[k].dimension == dimension and k not in intent.attributes]
        preferred = [k for k in CONTRASTS.get(dropped, ()) if k in same_dimension]
        options = preferred or same_dimension
        if not options:
            continue
        attributes = [k for k in intent.attributes if k != dropped] + [rng.choice(options)]
        if not _valid_combination(intent.product_type, attributes):
            continue
        attributes = [k for k in _extras(rng, intent.product_type, attributes) if k != dropped]
        if index.matches(intent.product_type, attributes):
            continue
        name = intent.name if rng.random() < DISTRACTOR_USES_QUERY_NAME else None
        return _ListingPlan(intent.product_type, tuple(attributes), _echo(rng, intent, attributes), name)
    return None


def _accessory(rng: random.Random, intent: _Intent, index: _RelevanceIndex) -> _ListingPlan | None:
    """An accessory whose listing names the queried product (连衣裙防尘挂袋)."""
    options = [a for a in ACCESSORIES if intent.product_type in a.targets]
    if not options:
        return None
    accessory = rng.choice(options)
    head = rng.choice(accessory.templates).format(obj=intent.name)
    attributes = _extras(rng, accessory.product_type, [])
    if index.matches(accessory.product_type, attributes):
        attributes = []
    return _ListingPlan(accessory.product_type, tuple(attributes), head=head)


def _shared_need(rng: random.Random, intent: _Intent, index: _RelevanceIndex) -> _ListingPlan | None:
    """A product of another category stating one asked-for need in the query's words."""
    category = PRODUCT_TYPES[intent.product_type].category
    # Price words (便宜, 性价比高) fit every product; echoing them would make one listing a
    # trap for hundreds of queries rather than a near miss for one.
    keys = [k for k in intent.attributes if ATTRIBUTES[k].dimension in SHARED_NEED_DIMENSIONS]
    rng.shuffle(keys)
    for key in keys:
        others = [t for t, spec in PRODUCT_TYPES.items() if spec.category != category and key in spec.attributes]
        if not others:
            continue
        other = rng.choice(others)
        attributes = _extras(rng, other, [key])
        if index.matches(other, attributes):
            attributes = [key]
            if index.matches(other, attributes):
                continue
        phrase_of = dict(zip(intent.attributes, intent.phrases))
        return _ListingPlan(other, tuple(attributes), {key: phrase_of[key]})
    return None


def _near_type(rng: random.Random, intent: _Intent, index: _RelevanceIndex) -> _ListingPlan | None:
    """A neighbouring product with the same needs, in listing words (冰丝T恤 for a 连衣裙)."""
    near = list(PRODUCT_TYPES[intent.product_type].near)
    rng.shuffle(near)
    near.sort(key=lambda t: -sum(k in PRODUCT_TYPES[t].attributes for k in intent.attributes))
    for other in near:
        shared = [k for k in intent.attributes if k in PRODUCT_TYPES[other].attributes]
        if not _valid_combination(other, shared):
            continue
        attributes = _extras(rng, other, shared)
        if index.matches(other, attributes):
            attributes = shared
            if index.matches(other, attributes):
                continue
        return _ListingPlan(other, tuple(attributes))
    return None


_DISTRACTOR_BUILDERS = {
    WRONG_ATTRIBUTE: _wrong_attribute,
    ACCESSORY: _accessory,
    SHARED_NEED: _shared_need,
    NEAR_TYPE: _near_type,
}


def _make_distractor(rng: random.Random, query_index: int, intent: _Intent, index: _RelevanceIndex,
                     corpus: _Corpus) -> SampleDistractor | None:
    first = _weighted_choice(rng, DISTRACTOR_KINDS, DISTRACTOR_KIND_WEIGHTS)
    # Fall back through the other kinds: not every product has an accessory or a swap.
    kinds = [first] + [k for k in DISTRACTOR_KINDS if k != first]
    for kind in kinds:
        for _ in range(3):
            plan = _DISTRACTOR_BUILDERS[kind](rng, intent, index)
            if plan is None:
                break
            text = _render_listing(rng, plan)
            if corpus.claim(text):
                return SampleDistractor(text, kind, query_index, plan.product_type)
    return None


def build_sample_data(config: SampleDataConfig = SampleDataConfig()) -> SampleDataset:
    """Generate the sample in memory (see the module docstring for how it is built).

    Raises:
        ValueError: when ``config.num_queries`` exceeds what the vocabulary supports.
    """
    rng = random.Random(config.seed)
    intents = _sample_intents(rng, config.num_queries)
    index = _RelevanceIndex()
    for query_index, intent in enumerate(intents):
        index.add(query_index, intent.product_type, intent.attributes)
    corpus = _Corpus()

    count_weights = POSITIVE_COUNT_WEIGHTS[:config.max_positives_per_query]
    queries: list[SampleQuery] = []
    for query_index, intent in enumerate(intents):
        wanted = _weighted_choice(rng, range(1, len(count_weights) + 1), count_weights)
        positives = []
        for _ in range(wanted):
            text = _make_positive(rng, query_index, intent, index, corpus)
            if text is not None:
                positives.append(text)
        if not positives:
            raise RuntimeError(f"could not write a unique positive for query {intent.text!r}")
        queries.append(SampleQuery(intent.text, tuple(positives), PRODUCT_TYPES[intent.product_type].category,
                                   intent.product_type, intent.attributes, intent.template))

    whole, fraction = divmod(config.distractors_per_query, 1.0)
    distractors: list[SampleDistractor] = []
    for query_index, intent in enumerate(intents):
        count = int(whole) + (1 if rng.random() < fraction else 0)
        for _ in range(count):
            distractor = _make_distractor(rng, query_index, intent, index, corpus)
            if distractor is not None:
                distractors.append(distractor)

    texts = [text for query in queries for text in query.positives] + [d.text for d in distractors]
    rng.shuffle(texts)
    passages = tuple((PASSAGE_ID_FORMAT.format(i), text) for i, text in enumerate(texts))
    return SampleDataset(tuple(queries), tuple(distractors), passages)


def generate_sample_data(output_dir: str | os.PathLike,
                         config: SampleDataConfig = SampleDataConfig()) -> SampleDataFiles:
    """Write the sample's training rows and corpus under ``output_dir``, atomically.

    Returns:
        The paths of ``rows.jsonl`` (``{"query", "pos"}``) and ``corpus.jsonl`` (``{"id", "text"}``).
    """
    dataset = build_sample_data(config)
    output_dir = Path(output_dir)
    files = SampleDataFiles(rows=output_dir / ROWS_FILENAME, corpus=output_dir / CORPUS_FILENAME)
    write_jsonl(files.rows, ({"query": q.text, "pos": list(q.positives)} for q in dataset.queries))
    write_jsonl(files.corpus, ({"id": pid, "text": text} for pid, text in dataset.corpus))
    kinds = Counter(d.kind for d in dataset.distractors)
    positives = sum(len(q.positives) for q in dataset.queries)
    logger.info(
        "sample data (seed %d): %d queries over %d categories, %d positives, %d distractors (%s), "
        "%d passages -> %s",
        config.seed, len(dataset.queries), len({q.category for q in dataset.queries}), positives,
        len(dataset.distractors), ", ".join(f"{k} {kinds[k]}" for k in DISTRACTOR_KINDS),
        len(dataset.corpus), output_dir,
    )
    return files
