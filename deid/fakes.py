"""Realistic fake PHI values, shared by the corpus generator and the surrogate step.

Why shared: a surrogate should look like the PHI it replaces (so a missed original hides
among fakes), and the corpus should contain PHI shaped like real PHI. Both draw from the
same generators here. Every method takes its randomness from the :class:`random.Random`
and Faker instance it was built with, so a fixed seed gives fixed values.

ID-like values come from *shape patterns*: ``#`` digit, ``@`` capital letter, ``?``
letter-or-digit; other characters are kept.
"""

from __future__ import annotations

import random
import string
import unicodedata
from functools import cache, lru_cache

from faker import Faker

NAME_LOCALES: tuple[tuple[str, float], ...] = (
    ("en_US", 0.62), ("en_GB", 0.08), ("es_ES", 0.08), ("it_IT", 0.05), ("fr_FR", 0.05),
    ("de_DE", 0.04), ("pl_PL", 0.03), ("pt_BR", 0.03), ("nl_NL", 0.02),
)

ID_SHAPES: dict[str, tuple[str, ...]] = {
    "MEDICALRECORD": ("#######", "########", "00######", "MR######", "###-##-##", "@#######",
                      "####-###", "##########"),
    "SSN": ("###-##-####", "#########", "### ## ####"),
    "HEALTHPLAN": ("@@@#########", "W#########", "#@@#-@@#-@@##", "@@@@-#######",
                   "####-####-####", "@@######-##"),
    "ACCOUNT": ("##########", "####-####-##", "@@#######", "########", "#########-#"),
    "LICENSE": ("@########", "@###-####-####", "@@#######", "MD#####", "@@-######",
                "#####"),
    "VEHICLE": ("#@@@###", "@@@-####", "#@@@@#####@######", "@@@ ####", "##@-@@#"),
    "DEVICE": ("@@@######", "SN##-####-@", "@@-#####-##", "#####@@####", "@##@####"),
    "BIOID": ("BIO-######", "FP@#####", "RTN-####-####", "DNA-##-#####", "@@#####-B"),
    "IDNUM": ("##-#####", "@##-#####", "S##-######", "######", "####-@-####", "@@########"),
    "PHONE": ("(%##) ###-####", "%##-###-####", "%##.###.####", "%#########",
              "+1 %## ### ####", "1-%##-###-####", "%##-###-#### x####", "%##/###-####"),
    "ZIP": ("#####", "#####-####"),
    "ROOM": ("###", "##@", "#-###", "@-###", "####", "###@"),
}
"""Shapes for IDs, phones (``%`` is a non-zero/one leading digit), zips and rooms."""

HOSPITAL_SUFFIXES = (
    "Memorial Hospital", "General Hospital", "Medical Center", "Regional Medical Center",
    "Community Hospital", "Health Center", "Children's Hospital", "Clinic",
    "University Hospital", "Rehabilitation Hospital", "Heart Institute", "Cancer Center",
)
DEPARTMENTS = (
    "Cardiology", "Emergency Department", "Medical Intensive Care Unit", "Neurology Service",
    "Oncology Clinic", "Labor and Delivery", "Radiology Department", "Cardiac Cath Lab",
    "Infusion Center", "Nephrology Clinic", "Surgical ICU", "CCU", "Pediatrics Ward",
    "Orthopedic Surgery", "Internal Medicine Clinic", "Behavioral Health Unit", "Dialysis Unit",
    "Endoscopy Suite", "Pulmonary Function Lab", "Sleep Center", "Wound Care Clinic",
    "Physical Therapy", "Hematology", "Geriatrics Clinic", "Transplant Service",
)
LOCATION_OTHER_SHAPES = (
    "{last} Park", "{last} Elementary School", "{city} Public Library", "Lake {last}",
    "Mount {last}", "{last} Mall", "Camp {last}", "{last} Community Church", "{city} YMCA",
    "{last} Field", "{city} Airport", "{last} Senior Center",
)
COUNTRIES = (
    "Mexico", "Canada", "Brazil", "India", "China", "Vietnam", "Haiti", "Ireland", "Italy",
    "Portugal", "Germany", "Poland", "Nigeria", "Kenya", "Peru", "Colombia", "Guatemala",
    "Philippines", "Japan", "Korea", "Russia", "Ukraine", "Greece", "Egypt", "Jamaica",
    "Dominican Republic", "El Salvador", "Cambodia", "Somalia", "Ethiopia", "France", "Spain",
)
NUMBER_WORDS = (
    "", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)
TENS_WORDS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty",
              "ninety")


@cache
def faker_for(locale: str) -> Faker:
    """One Faker per locale (construction is slow); callers reseed it."""
    return Faker(locale)


@lru_cache(maxsize=1)
def professions() -> tuple[str, ...]:
    """Faker's job list without qualifiers ("Teacher, adult education" -> dropped)."""
    from faker.providers.job.en_US import Provider

    return tuple(j for j in Provider.jobs if "," not in j and "(" not in j and "/" not in j)


def fill_shape(shape: str, rng: random.Random) -> str:
    """A value of the given shape (see module docstring)."""
    out = []
    for ch in shape:
        if ch == "#":
            out.append(rng.choice(string.digits))
        elif ch == "%":
            out.append(rng.choice("23456789"))
        elif ch == "@":
            out.append(rng.choice(string.ascii_uppercase))
        elif ch == "?":
            out.append(rng.choice(string.ascii_uppercase + string.digits))
        else:
            out.append(ch)
    return "".join(out)


def age_words(age: int) -> str:
    """An age written out ("ninety-two", "one hundred one")."""
    if age >= 100:
        rest = age - 100
        return "one hundred" + (f" {age_words(rest)}" if rest else "")
    if age < 20:
        return NUMBER_WORDS[age]
    tens, ones = divmod(age, 10)
    return TENS_WORDS[tens] + (f"-{NUMBER_WORDS[ones]}" if ones else "")


class FakePHI:
    """Fake values for every PHI subtype, from one seeded RNG and Faker."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._seed_fakers()

    def _seed_fakers(self) -> None:
        self.locale = self.rng.choices([loc for loc, _ in NAME_LOCALES],
                                       [w for _, w in NAME_LOCALES])[0]
        self.fake = faker_for("en_US")
        self.fake.seed_instance(self.rng.getrandbits(32))
        self.name_fake = faker_for(self.locale)
        self.name_fake.seed_instance(self.rng.getrandbits(32))

    def shape(self, kind: str) -> str:
        return fill_shape(self.rng.choice(ID_SHAPES[kind]), self.rng)

    def first_name(self, sex: str | None = None) -> str:
        if sex == "F":
            return self.name_fake.first_name_female()
        if sex == "M":
            return self.name_fake.first_name_male()
        return self.name_fake.first_name()

    def last_name(self) -> str:
        return self.name_fake.last_name()

    def ssn(self) -> str:
        area = self.rng.choice([n for n in range(1, 900) if n != 666])
        body = f"{area:03d}{self.rng.randint(1, 99):02d}{self.rng.randint(1, 9999):04d}"
        shape = self.rng.choice(ID_SHAPES["SSN"])
        digits = iter(body)
        return "".join(next(digits) if ch == "#" else ch for ch in shape)

    def username(self, first: str, last: str) -> str:
        f, lst = _ascii(first).lower() or "x", _ascii(last).lower() or "user"
        styles = (f"{f[0]}{lst}{self.rng.randint(1, 99)}", f"{lst}.{f}", f"{f[0]}{lst[:5]}",
                  f"{f}{lst[0]}{self.rng.randint(10, 999)}", f"{lst}{f[0]}")
        return self.rng.choice(styles)

    def email(self, first: str, last: str) -> str:
        domain = self.fake.free_email_domain() if self.rng.random() < 0.6 else \
            self.fake.domain_name()
        f, lst = _ascii(first).lower() or "pt", _ascii(last).lower() or "mail"
        local = self.rng.choice((f"{f}.{lst}", f"{f[0]}{lst}", f"{lst}{self.rng.randint(1, 99)}",
                                 self.fake.user_name()))
        return f"{local}@{domain}"

    def url(self) -> str:
        base = self.fake.url().rstrip("/")
        if self.rng.random() < 0.4:
            base += "/" + self.rng.choice(("portal", "patients/login", "mychart",
                                           "records?id=" + fill_shape("#####", self.rng)))
        return base if self.rng.random() < 0.8 else base.split("://", 1)[1]

    def ipaddr(self) -> str:
        return self.fake.ipv4() if self.rng.random() < 0.9 else self.fake.ipv6()

    def street(self) -> str:
        return self.fake.street_address()

    def city(self) -> str:
        return self.fake.city()

    def state(self) -> str:
        return self.fake.state() if self.rng.random() < 0.5 else self.fake.state_abbr()

    def country(self) -> str:
        return self.rng.choice(COUNTRIES)

    def zip(self) -> str:
        return self.shape("ZIP")

    def hospital(self) -> str:
        r = self.rng.random()
        if r < 0.45:
            return f"{self.fake.last_name()} {self.rng.choice(HOSPITAL_SUFFIXES)}"
        if r < 0.65:
            return f"{self.fake.city()} {self.rng.choice(HOSPITAL_SUFFIXES)}"
        if r < 0.8:
            return f"St. {self.fake.first_name()}'s {self.rng.choice(HOSPITAL_SUFFIXES[:4])}"
        if r < 0.9:
            return f"University of {self.fake.state()} Hospital"
        return fill_shape(self.rng.choice(("@@H", "@@@C", "@MC", "@@MC")), self.rng)

    def department(self) -> str:
        if self.rng.random() < 0.2:
            return f"{self.fake.last_name()} {self.rng.randint(2, 14)}"
        return self.rng.choice(DEPARTMENTS)

    def room(self) -> str:
        return self.shape("ROOM")

    def organization(self) -> str:
        return self.fake.company()

    def location_other(self) -> str:
        shape = self.rng.choice(LOCATION_OTHER_SHAPES)
        return shape.format(last=self.fake.last_name(), city=self.fake.city())

    def profession(self) -> str:
        job = self.rng.choice(professions())
        return job.lower() if self.rng.random() < 0.6 else job

    def phone(self) -> str:
        return self.shape("PHONE")


def _ascii(text: str) -> str:
    norm = unicodedata.normalize("NFKD", text)
    return "".join(c for c in norm if c.isascii() and c.isalpha())
