"""Identifier kinds and their one canonical form, used for exact lookup. No I/O.

:func:`normalize_identifier` is the single place where an identifier becomes the
string that is stored, indexed and compared: content validation and the node's
``intelhub lookup`` command both call it, so a value typed at a prompt matches
the value a partner published. The rules per kind are in docs/content.md
("Identifiers"). Checks use maintained libraries wherever one exists (schwifty
for IBAN/BIC, python-stdnum for IMO/LEI/bitcoin, phonenumbers for E.164,
pycountry for country codes); where none does, the check is a documented format
check.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any, Final

import pycountry

from .errors import ValidationError
from .lazy import LazyModule

# Loaded on first use: most packets carry no phone number or IBAN, and the CLI must start fast.
phonenumbers: Any = LazyModule("phonenumbers")
schwifty: Any = LazyModule("schwifty")
schwifty_errors: Any = LazyModule("schwifty.exceptions")
stdnum_bitcoin: Any = LazyModule("stdnum.bitcoin")
stdnum_imo: Any = LazyModule("stdnum.imo")
stdnum_lei: Any = LazyModule("stdnum.lei")
stdnum_errors: Any = LazyModule("stdnum.exceptions")

IDENTIFIER_TYPES: Final[tuple[str, ...]] = (
    "passport", "national_id", "tax_id", "iban", "bic", "account", "crypto_wallet",
    "imo", "mmsi", "phone", "email", "handle", "vehicle_registration",
    "company_registration", "lei",
)

#: Names a person may type for a kind (``intelhub lookup wallet ...``), lowercased.
KIND_ALIASES: Final[dict[str, str]] = {
    "wallet": "crypto_wallet", "crypto": "crypto_wallet", "tel": "phone",
    "telephone": "phone", "mobile": "phone", "username": "handle", "plate": "vehicle_registration",
    "id": "national_id", "swift": "bic", "vat": "tax_id",
}

#: Optional fields an identifier object may carry besides ``type`` and ``value``.
EXTRA_FIELDS: Final[dict[str, frozenset[str]]] = {
    kind: frozenset({"country"}) for kind in (
        "passport", "national_id", "tax_id", "account", "vehicle_registration",
        "company_registration", "phone",
    )
} | {"crypto_wallet": frozenset({"chain"}), "handle": frozenset({"platform"})}

#: Chains whose addresses are checked (checksums where the format has one).
KNOWN_CHAINS: Final[tuple[str, ...]] = ("BTC", "ETH", "BSC", "POLYGON", "TRX", "LTC")
#: What people write for a chain (token standards name the chain they run on).
CHAIN_ALIASES: Final[dict[str, str]] = {
    "BITCOIN": "BTC", "XBT": "BTC", "ETHEREUM": "ETH", "ERC20": "ETH", "USDT-ERC20": "ETH",
    "TRON": "TRX", "TRC20": "TRX", "USDT-TRC20": "TRX", "BEP20": "BSC", "USDT-BEP20": "BSC",
    "BNB": "BSC", "MATIC": "POLYGON", "LITECOIN": "LTC",
}
_EVM_CHAINS: Final = frozenset({"ETH", "BSC", "POLYGON"})
#: Handle platforms that were renamed, so one account has one key.
PLATFORM_ALIASES: Final[dict[str, str]] = {"twitter": "x", "fb": "facebook", "ig": "instagram"}

#: XK (Kosovo) is a user-assigned code that ISO 3166 lacks but the EU, IOM and
#: Interpol use; without it partners could not record Kosovar documents.
EXTRA_COUNTRY_CODES: Final[frozenset[str]] = frozenset({"XK"})

MAX_IDENTIFIER_LEN: Final[int] = 128

_SEPARATORS = re.compile(r"[\s\-./]+")
_ASCII_ALNUM = re.compile(r"[A-Z0-9]+")
_TOKEN = re.compile(r"[A-Z0-9][A-Z0-9_-]{1,19}")
_PLATFORM = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+")
_EVM_ADDRESS = re.compile(r"0x[0-9a-f]{40}")
_GENERIC_ADDRESS = re.compile(r"[A-Za-z0-9]{16,120}")
# Bitcoin's base58 alphabet (no 0, O, I, l): a constant of the address format.
_BASE58_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE58 = frozenset(_BASE58_ALPHABET)
_BASE58_DIGIT: Final = {c: i for i, c in enumerate(_BASE58_ALPHABET)}
_BECH32 = frozenset("qpzry9x8gf2tvdw0s3jn54khce6mua7l")
_BECH32M_CONST: Final = 0x2BC830A3  # BIP 350; plain bech32 (BIP 173) checks to 1


def country_code(value: object) -> str:
    """An ISO 3166-1 alpha-2 code, uppercased; raises ValidationError with a hint."""
    if type(value) is not str:
        raise ValidationError("", f"expected a country code string, got {type_name(value)}")
    code = value.strip().upper()
    if code in EXTRA_COUNTRY_CODES or (len(code) == 2 and pycountry.countries.get(alpha_2=code)):
        return code
    hint = ""
    try:
        # lookup() matches alpha-3 codes and country names: "FRA" or "France" -> FR.
        hint = f' (did you mean "{pycountry.countries.lookup(value.strip()).alpha_2}"?)'
    except LookupError:
        pass
    raise ValidationError("", f'"{value}" is not an ISO 3166-1 alpha-2 country code{hint}')


def type_name(value: object) -> str:
    """How a JSON user would call the type of ``value`` (for error messages)."""
    if value is None:
        return "null"
    if type(value) is bool:
        return "a boolean"
    if type(value) in (int, float):
        return "a number"
    if type(value) is str:
        return "a string"
    if type(value) in (list, tuple):
        return "a list"
    if type(value) is dict:
        return "an object"
    return type(value).__name__


def show(value: object) -> str:
    """``value`` quoted if it is a string, else its JSON type (for error messages)."""
    return f'"{value}"' if type(value) is str else type_name(value)


def resolve_kind(kind: str) -> str:
    """The identifier type for ``kind`` as a person types it ("IBAN", "wallet", "IMO")."""
    key = kind.strip().lower().replace("-", "_") if type(kind) is str else ""
    key = KIND_ALIASES.get(key, key)
    if key not in IDENTIFIER_TYPES:
        raise ValidationError("", f'unknown identifier type "{kind}" (one of: {", ".join(IDENTIFIER_TYPES)})')
    return key


def normalize_chain(chain: str) -> str:
    """The canonical chain name ("usdt-trc20" -> "TRX"); unknown but well-formed names pass."""
    token = chain.strip().upper() if type(chain) is str else ""
    token = CHAIN_ALIASES.get(token, token)
    if not _TOKEN.fullmatch(token):
        raise ValidationError("", f'"{chain}" is not a chain name (e.g. {", ".join(KNOWN_CHAINS)})')
    return token


def normalize_platform(platform: str) -> str:
    """The canonical platform name of a handle, lowercase ("Twitter" -> "x")."""
    token = platform.strip().lower() if type(platform) is str else ""
    token = PLATFORM_ALIASES.get(token, token)
    if not _PLATFORM.fullmatch(token):
        raise ValidationError("", f'"{platform}" is not a platform name (e.g. "telegram", "tiktok")')
    return token


def normalize_identifier(kind: str, value: str, **extra: str) -> str:
    """The canonical form of ``value`` as an identifier of ``kind``.

    ``extra`` may give ``country`` (region of a phone number written in national
    form) and ``chain`` (of a crypto wallet). Raises :class:`ValidationError`
    (with an empty path) whose message says what to fix.
    """
    kind = resolve_kind(kind)
    if kind == "crypto_wallet":
        return split_wallet(value, extra.get("chain"))[0]
    text = _prepare(kind, value)
    if kind == "phone":
        return _phone(text, extra.get("country"))
    return str(_NORMALIZERS[kind](text))


def _prepare(kind: str, value: object) -> str:
    # NFKC folds full-width digits and letters, common in CJK input methods.
    if type(value) is not str:
        raise ValidationError("", f"expected the identifier as a string, got {type_name(value)}")
    text = unicodedata.normalize("NFKC", value).strip()
    if not text:
        raise ValidationError("", f"the {kind} is empty")
    if len(text) > MAX_IDENTIFIER_LEN:
        raise ValidationError("", f"the {kind} is longer than {MAX_IDENTIFIER_LEN} characters")
    return text


def split_wallet(value: str, chain: str | None = None) -> tuple[str, str]:
    """``(address, chain)`` of a wallet written as ``0x..``, ``eth:0x..`` or with ``chain``.

    The chain is taken from a ``chain:`` prefix, from ``chain``, or else guessed
    from the address format (bc1/1/3 -> BTC, 0x -> ETH, T -> TRX).
    """
    value = _prepare("crypto_wallet", value)
    prefix, sep, rest = value.partition(":")
    if sep and prefix.upper() in KNOWN_CHAINS + tuple(CHAIN_ALIASES):
        prefixed = normalize_chain(prefix)
        if chain is not None and normalize_chain(chain) != prefixed:
            raise ValidationError("", f'wallet "{value}" says chain {prefixed} but chain is "{chain}"')
        chain, value = prefixed, rest.strip()
    if chain is None:
        chain = _guess_chain(value)
        if chain is None:
            raise ValidationError(
                "", f'cannot tell the chain of wallet "{value}" (give a chain such as "BTC", "ETH", "TRX")'
            )
    chain = normalize_chain(chain)
    return _address(value, chain), chain


def _guess_chain(address: str) -> str | None:
    # By shape only; _address() then checks it and explains what is wrong.
    lower = address.lower()
    if lower.startswith("0x"):
        return "ETH"  # EVM chains share one address format; ETH is the common case.
    if lower.startswith("bc1") or (address[:1] in ("1", "3") and 25 <= len(address) <= 35):
        return "BTC"
    if lower.startswith("ltc1") or (address[:1] in ("L", "M") and 25 <= len(address) <= 35):
        return "LTC"
    if address.startswith("T") and len(address) == 34:
        return "TRX"
    return None


def _address(address: str, chain: str) -> str:
    bad = f'"{address}" is not a valid {chain} address'
    if chain in _EVM_CHAINS:
        # EIP-55 mixed-case checksums need Keccak-256, which the standard library
        # lacks (hashlib's sha3_256 is a different function): format check only.
        if not _EVM_ADDRESS.fullmatch(address.lower()):
            raise ValidationError("", f"{bad} (expected 0x and 40 hex digits)")
        return address.lower()
    if chain == "TRX":
        if _base58check(address, (0x41,)) is None:
            raise ValidationError("", f"{bad} (expected T and 33 base58 characters, checksum verified)")
        return address
    if chain in ("BTC", "LTC"):
        hrp, versions = ("bc", (0x00, 0x05)) if chain == "BTC" else ("ltc", (0x30, 0x32, 0x05))
        if address[: len(hrp) + 1].lower() == hrp + "1":
            if _segwit(address, hrp):
                return address.lower()
        elif _base58check(address, versions) is not None:
            return address
        raise ValidationError("", f"{bad} (check for a typo: the checksum does not match)")
    # Other chains have formats (and checksums) no installed library checks.
    if not _GENERIC_ADDRESS.fullmatch(address):
        raise ValidationError("", f"{bad} (expected 16-120 letters and digits)")
    return address


def b58decode(text: str) -> bytes:
    """Base58 to bytes, as ``stdnum.bitcoin.b58decode`` (tests hold the two equal), 4-5 times faster:
    its per-character lambda and ``str.index`` were a sixth of validating an alert with a wallet.
    ``text`` must be base58 (KeyError otherwise)."""
    n = 0
    for c in text:
        n = n * 58 + _BASE58_DIGIT[c]
    zeros = len(text) - len(text.lstrip("1"))  # each leading "1" is a leading zero byte
    return bytes(zeros) + n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")


def _base58check(address: str, versions: tuple[int, ...]) -> bytes | None:
    """The payload of a 25-byte base58check address with an allowed version byte."""
    if not 25 <= len(address) <= 35 or not set(address) <= _BASE58:
        return None
    raw = b58decode(address)
    digest = hashlib.sha256(hashlib.sha256(raw[:-4]).digest()).digest()
    if len(raw) != 25 or raw[0] not in versions or digest[:4] != raw[-4:]:
        return None
    return raw[:-4]


def _segwit(address: str, hrp: str) -> bool:
    """BIP 173 / BIP 350: version 0 uses bech32, versions 1-16 bech32m."""
    if address != address.lower() and address != address.upper():
        return False  # mixed case is invalid in bech32
    data_part = address.lower()[len(hrp) + 1 :]
    if not 14 <= len(address) <= 90 or not set(data_part) <= _BECH32:
        return False
    alphabet = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
    data = [alphabet.index(c) for c in data_part]
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    check = stdnum_bitcoin.bech32_checksum(expanded + data)
    version = data[0]
    try:
        program = stdnum_bitcoin.b32decode(data[1:-6])
    except stdnum_errors.ValidationError:
        return False
    if version == 0:
        return check == 1 and len(program) in (20, 32)
    return version <= 16 and check == _BECH32M_CONST and 2 <= len(program) <= 40


def _phone(text: str, country: str | None) -> str:
    # E.164 via phonenumbers (libphonenumber's metadata); "00" is the ITU prefix.
    lead = text.lstrip("( ")
    if lead.startswith("00"):
        text = lead = "+" + lead[2:]
    region = country_code(country) if country is not None else None
    if not lead.startswith("+") and region is None:
        raise ValidationError("", f'phone "{text}" has no country code: write it as +CC... or give its country')
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        why = {
            exc.INVALID_COUNTRY_CODE: "its country code is unknown",
            exc.TOO_SHORT_NSN: "it has too few digits", exc.TOO_SHORT_AFTER_IDD: "it has too few digits",
            exc.TOO_LONG: "it has too many digits",
        }.get(exc.error_type, "write it as +CC followed by digits")
        raise ValidationError("", f'"{text}" is not a phone number ({why})') from None
    # "Possible" (right country code and length) rather than "valid": numbering
    # plans change faster than metadata, and intelligence must not be refused for it.
    if not phonenumbers.is_possible_number(number):
        raise ValidationError("", f'phone "{text}" has the wrong number of digits for +{number.country_code}')
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _iban(text: str) -> str:
    try:
        return schwifty.IBAN(text).compact
    except schwifty_errors.InvalidChecksumDigits:
        raise ValidationError("", f'IBAN "{text}" has a wrong check digit (check for a typo)') from None
    except schwifty_errors.InvalidCountryCode:
        raise ValidationError("", f'IBAN "{text}" does not start with a country that uses IBANs') from None
    except schwifty_errors.InvalidLength:
        raise ValidationError("", f'IBAN "{text}" has the wrong length for its country') from None
    except schwifty_errors.SchwiftyException as exc:
        raise ValidationError("", f'"{text}" is not a valid IBAN ({exc})') from None


def _bic(text: str) -> str:
    try:
        bic = schwifty.BIC(text).compact
    except schwifty_errors.SchwiftyException as exc:
        raise ValidationError("", f'"{text}" is not a valid BIC ({exc})') from None
    # DEUTDEFF and DEUTDEFFXXX name the same head office: one key for both.
    return bic[:8] if bic.endswith("XXX") else bic


def _stdnum(label: str, module: Any) -> Any:
    def check(text: str) -> str:
        try:
            return str(module.validate(text))
        except stdnum_errors.InvalidChecksum:
            raise ValidationError("", f'{label} "{text}" has a wrong check digit (check for a typo)') from None
        except stdnum_errors.ValidationError:
            raise ValidationError("", f'"{text}" is not a valid {label}') from None

    return check


def _code(label: str, *, min_len: int, max_len: int, ascii_only: bool = True) -> Any:
    """Case-insensitive document numbers: separators removed, uppercased.

    National ids, tax ids and company numbers come in many kinds per country, so a
    wrong checksum rule would refuse true data: these get a format check only.
    """

    def check(text: str) -> str:
        code = _SEPARATORS.sub("", text).upper().strip("<")  # "<" pads passport MRZ fields
        ok = _ASCII_ALNUM.fullmatch(code) if ascii_only else code.isalnum()
        if not ok or not min_len <= len(code) <= max_len:
            allowed = "letters A-Z and digits" if ascii_only else "letters and digits"
            raise ValidationError(
                "", f'{label} "{text}" must be {min_len}-{max_len} {allowed} (spaces and dashes are ignored)'
            )
        return code

    return check


def _mmsi(text: str) -> str:
    # No library knows the MID (country) table; nine digits is the ITU-R M.585 format.
    digits = _SEPARATORS.sub("", text)
    if not (digits.isascii() and digits.isdigit() and len(digits) == 9):
        raise ValidationError("", f'MMSI "{text}" must be exactly 9 digits')
    return digits


def _email(text: str) -> str:
    # Local parts are case-sensitive in theory but never in practice: lowercase
    # so an exact lookup finds the address however it was typed.
    address = text.lower()
    if len(address) > 254 or not _EMAIL.fullmatch(address):
        raise ValidationError("", f'"{text}" is not an email address (expected name@domain.tld)')
    return address


def _handle(text: str) -> str:
    handle = text.lstrip("@").lower()  # the big platforms treat handles case-insensitively
    if not handle or any(c.isspace() for c in handle) or not handle.isprintable():
        raise ValidationError("", f'handle "{text}" must be one word without spaces (a leading @ is dropped)')
    return handle


_NORMALIZERS: Final[dict[str, Any]] = {
    "passport": _code("passport number", min_len=5, max_len=20),
    "national_id": _code("national id", min_len=2, max_len=30),
    "tax_id": _code("tax id", min_len=2, max_len=30),
    "account": _code("account number", min_len=4, max_len=34),
    "company_registration": _code("company registration number", min_len=2, max_len=30),
    # Japanese plates carry kana and kanji, hence not ASCII-only.
    "vehicle_registration": _code("registration", min_len=2, max_len=20, ascii_only=False),
    "iban": _iban,
    "bic": _bic,
    "imo": _stdnum("IMO number", stdnum_imo),
    "lei": _stdnum("LEI", stdnum_lei),
    "mmsi": _mmsi,
    "email": _email,
    "handle": _handle,
}


def guess_identifier_kind(value: str) -> str | None:
    """The kind ``value`` unambiguously is, for a lookup given only a value; else None."""
    text = unicodedata.normalize("NFKC", value).strip() if type(value) is str else ""
    compact = _SEPARATORS.sub("", text)
    if not text or len(text) > MAX_IDENTIFIER_LEN:
        return None
    candidates: list[tuple[str, bool]] = [
        ("email", "@" in text),
        ("phone", text.startswith("+")),
        ("imo", compact.upper().startswith("IMO")),
        ("crypto_wallet", True),
        ("iban", compact[:2].isalpha() and compact[2:4].isdigit()),
        ("lei", len(compact) == 20),
    ]
    for kind, plausible in candidates:
        if not plausible:
            continue
        try:
            normalize_identifier(kind, text)
            return kind
        except ValidationError:
            continue
    return None
