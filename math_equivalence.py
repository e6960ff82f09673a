"""MATH-style answer equivalence: does a predicted answer mean the same as the ground truth?

The verifier in sdpg.py reads the final answer out of a response and compares plain numbers itself (all of GSM8K
stops there); this module holds what a careful human grader of MATH-500 / AIME-style answers accepts beyond that:
the same value written differently (closed forms evaluated, exactly where the arithmetic is rational, polynomials at
fixed points, never with eval), sets and solution lists in any order, tuples and intervals element by element,
matrices, units, \\text{}, a choice letter with or without "(…)", capitalisation of words. `normalize_answer` (one
spelling per thing) is applied to both sides of every comparison, GSM8K's included. Pure Python, no torch.

Every pattern here is linear (or bounded) on any input: a grader that backtracks can stall training for minutes on
one sentence. Inputs are cut to _MAX_ANSWER characters first, so every step below is bounded. How it was measured
against math-verify and labelled tables: docs/verifier.md.
"""

import cmath
import collections
import math
import re
from fractions import Fraction

_MAX_ANSWER = 400
_MIXED = re.compile(r"^(-?)(\d+)\s*\\frac\s*\{?(\d+)\}?\s*\{?(\d+)\}?$")  # 1\frac{4}{5}, 2\frac34
_CHOICE = re.compile(r"^\(?([A-Ea-e])\)?$")
_BASE = re.compile(r"^(\w+?)_\{?(\d+)\}?$")
_MATRIX = re.compile(r"^\\begin\{[pbvV]?matrix\}(.*)\\end\{[pbvV]?matrix\}$", re.S)
_TOKEN = re.compile(r"\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\\[a-zA-Z]+|[a-zA-Z]|\S")
_FUNCTIONS = {"sin": cmath.sin, "cos": cmath.cos, "tan": cmath.tan, "cot": lambda z: 1 / cmath.tan(z),
              "sec": lambda z: 1 / cmath.cos(z), "csc": lambda z: 1 / cmath.sin(z), "ln": cmath.log, "log": cmath.log,
              "exp": cmath.exp, "arcsin": cmath.asin, "arccos": cmath.acos, "arctan": cmath.atan}
_MAX_EXACT_BITS = 20_000  # an exact power larger than this is evaluated in floating point (10^{10^9} must not hang);
# e-notation numerals are bounded the same way (_numeral), and there is no factorial to grow without bound


# One spelling per thing. Applied to both sides before any comparison, GSM8K's and MATH's alike.
_SPELLINGS = (("\\left", ""), ("\\right", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\displaystyle", ""),
              ("\\$", ""), ("$", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""), ("~", " "), ("**", ""),
              ("^\\circ", ""), ("^{\\circ}", ""), ("°", ""), ("{,}", ","), ("−", "-"), ("\\cdot", "*"),
              ("\\times", "*"), ("\\div", "/"), ("\\le", "<="), ("\\ge", ">="), ("\\%", "%"), ("\\lbrace", "\\{"),
              ("\\rbrace", "\\}"), ("\\(", ""), ("\\)", ""), ("\\[", ""), ("\\]", ""))
_UNBRACE = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_UNIT = re.compile(r"(?:(?<=[\d}])|(?<=\\pi))\s+(?:square|cubic)?\s*[a-zA-Z]{2,}(?:\s+[a-zA-Z]{2,})?"
                   r"(?:\^\{?[23]\}?)?$")
_NUMBER_AND_WORDS = re.compile(r"(-?[\d.,]+(?:/\d+)?)(?:\s+[a-zA-Z]|[a-zA-Z]{2})[a-zA-Z.\s]*")  # "18 dollars", "5cm"
_PREFIX = re.compile(r"^(?:[a-zA-Z]\w*(?:\([a-z]\))?|\\angle\s*[A-Z]{1,3}|m\s*\\angle\s*[A-Z]{1,3})"
                     r"\s*(?:=|\\in)(?!=)\s*")  # x =, total =, f(x) =, \angle ABC =, x \in
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\s?\d{3})+(?:\.\d+)?%?")  # 10,080 and 11, 111, 100 are one number each


def normalize_answer(text: str) -> str:
    """LaTeX spacing and sizing dropped, \\text{} unwrapped, outer braces, units, `x =` prefixes and thousands
    commas cut: "$\\$1{,}000$ dollars" → "1000", "x = \\dfrac{3}{4}" → "\\frac{3}{4}"."""
    for old, new in _SPELLINGS:
        text = text.replace(old, new)
    text = re.sub(r"(?<!\\)\\ ", " ", text)  # "\ " is a space; "\\ " (a matrix row break) is not
    for _ in range(3):  # nested \text{\textbf{…}}
        text = _UNBRACE.sub(r"\1", text)
    text = text.strip().rstrip(".").strip()
    while len(text) > 1 and text[0] == "{" and closing_brackets(text).get(0) == len(text) - 1:  # {5} → 5, not {a}{b}
        text = text[1:-1].strip()
    text = _PREFIX.sub("", _UNIT.sub("", text)).strip()
    if number := _NUMBER_AND_WORDS.fullmatch(text):
        text = number.group(1)
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "").replace(" ", "")
    return re.sub(r"\s+", " ", text)


def math_equal(predicted: str, truth: str) -> bool:
    """predicted and truth mean the same answer (both normalized, split into items, compared item by item)."""
    a, b = normalize_answer(predicted[:_MAX_ANSWER]), normalize_answer(truth[:_MAX_ANSWER])
    return a == b or _same_structure(_structure(a), _structure(b))


def _encloses(text: str) -> bool:
    """The first bracket closes at the last character: "(1,2)" yes, "(a+1)(b+2)" no."""
    return closing_brackets(text).get(0) == len(text) - 1


def _top_level_split(text: str, separators: tuple[str, ...]) -> list[str]:
    """Split at separators outside every bracket: "(1,2), 3" → ["(1,2)", "3"]; an unclosed bracket runs to the end."""
    parts, start, i, closing = [], 0, 0, closing_brackets(text)
    while i < len(text):
        if text[i] in "([{":
            i = closing.get(i, len(text)) + 1
        elif sep := next((s for s in separators if text.startswith(s, i)), None):
            parts.append(text[start:i])
            start = i = i + len(sep)
        else:
            i += 1
    return [part.strip() for part in parts + [text[start:]]]


def _structure(text: str):
    """("set", items) | ("seq", open, items, close) (tuples and intervals) | ("union", sets) | ("matrix", rows) |
    ("value", text). Items are structures themselves."""
    matrix = _MATRIX.match(text)
    if matrix:
        rows = [row for row in matrix.group(1).split("\\\\") if row.strip()]
        return ("matrix", [[_structure(normalize_answer(cell)) for cell in row.split("&")] for row in rows])
    if len(pieces := _top_level_split(text, ("\\cup",))) > 1:
        return ("union", [_structure(piece) for piece in pieces])
    if text.startswith("\\{") and text.endswith("\\}"):
        text = text[2:-2]
    elif (text[:1] in "([" and text[-1:] in ")]" and _encloses(text)
          and len(items := _top_level_split(text[1:-1], (",",))) > 1):
        return ("seq", text[0], [_structure(normalize_answer(item)) for item in items], text[-1])
    items = _top_level_split(text, (",", ";", " or ", " and "))
    items = [expanded for item in items if item for expanded in _expand_pm(normalize_answer(item))]
    return ("set", [("value", item) for item in items]) if len(items) != 1 else ("value", items[0])


def _expand_pm(text: str) -> list[str]:
    """"1 \\pm \\sqrt{19}" → ["1 + \\sqrt{19}", "1 - \\sqrt{19}"]: the two solutions it stands for."""
    if text.count("\\pm") != 1:
        return [text]
    return [text.replace("\\pm", "+"), text.replace("\\pm", "-")]


def _same_structure(a, b) -> bool:
    if a[0] == "set" and len(a[1]) == 1:
        a = a[1][0]
    if b[0] == "set" and len(b[1]) == 1:
        b = b[1][0]
    if a[0] != b[0]:
        return False
    if a[0] == "value":
        return _same_value(a[1], b[1])
    if a[0] == "seq":
        return a[1] == b[1] and a[3] == b[3] and len(a[2]) == len(b[2]) and all(map(_same_structure, a[2], b[2]))
    if a[0] == "matrix":
        return [len(row) for row in a[1]] == [len(row) for row in b[1]] and all(
            _same_structure(x, y) for row_a, row_b in zip(a[1], b[1]) for x, y in zip(row_a, row_b))
    unmatched = list(b[1])  # set, union: every item of one pairs with its own item of the other
    for item in a[1]:
        match = next((j for j, other in enumerate(unmatched) if _same_structure(item, other)), None)
        if match is None:
            return False
        unmatched.pop(match)
    return not unmatched


def _same_value(a: str, b: str) -> bool:
    """Equal as numbers/expressions, as base-n numerals, as choice letters, or as words (any capitalisation)."""
    if a.lower() == b.lower() and not re.search(r"\d|\\", a) or a == b:
        return True
    choices = _CHOICE.match(a), _CHOICE.match(b)
    if all(choices):
        return choices[0].group(1).upper() == choices[1].group(1).upper()
    bases = _BASE.match(a), _BASE.match(b)
    if any(bases):  # 52_8: a subscript on one side only is the base the question asked for
        (digits_a, base_a), (digits_b, base_b) = ((m.groups() if m else (s, None)) for m, s in zip(bases, (a, b)))
        return digits_a == digits_b and (base_a == base_b or None in (base_a, base_b))
    if "=" in a and "=" in b:  # equations: lhs − rhs equal as expressions
        a, b = ("(" + ")-(".join(side.split("=", 1)) + ")" for side in (a, b))
    percent_a, percent_b = a.endswith("%"), b.endswith("%")
    values_a, values_b = _values(a.rstrip("%")), _values(b.rstrip("%"))
    if values_a is None or values_b is None:
        return False
    if percent_a != percent_b:  # "50%" = 1/2; "25%" also answers "what percent …" when the truth is 25
        scale = [v / 100 for v in (values_a if percent_a else values_b)]
        other = values_b if percent_a else values_a
        return all(map(_close, scale, other)) or (all(map(_close, values_a, values_b)) and abs(other[0]) >= 1)
    return all(map(_close, values_a, values_b))


def _close(x, y) -> bool:
    """Exact values (Fractions: the arithmetic was rational) compare exactly; otherwise to float64's precision."""
    if isinstance(x, Fraction) and isinstance(y, Fraction):
        return x == y  # 10^{30} ≠ 10^{30} + 1, which no float tolerance can tell apart
    try:
        x, y = complex(x), complex(y)
    except OverflowError:  # an exact value beyond float range next to an inexact one
        return False
    if not (cmath.isfinite(x) and cmath.isfinite(y)):
        return x == y
    return abs(x - y) <= 1e-12 * max(1.0, abs(x), abs(y))  # float64 keeps ~16 digits


def _values(text: str) -> list | None:
    """The expression's value at two fixed assignments of its letters (i is √−1, e is Euler's number), or None if
    it does not parse. Two expressions that agree at both points are taken as equal: exact for numbers, and a
    polynomial or rational identity that fails would have to vanish at both points."""
    mixed = _MIXED.match(text)  # 1\frac{4}{5} is one and four fifths, not 4/5
    if mixed:
        sign, whole, numerator, denominator = mixed.groups()
        text = f"{sign}({whole}+\\frac{{{numerator}}}{{{denominator}}})"
    try:
        values = []
        for shift in (0.0, 0.731):
            tokens = collections.deque(_TOKEN.findall(text))
            values.append(_expression(tokens, shift, 0))
            if tokens:
                raise ValueError(f"unexpected {tokens[0]!r}")
        return values
    except (ValueError, ArithmeticError, IndexError, RecursionError):
        return None


# A recursive-descent reader over + − · / ^, implied products, \frac, \sqrt, functions, π, ∞, i, e and letters
# (each letter a fixed irrational-looking value, moved by `shift`). No eval; depth and input length are bounded.
# Numbers stay exact Fractions while the arithmetic is rational; anything irrational turns them complex.


def _take(tokens, expected=None) -> str:
    token = tokens[0] if tokens else None
    if token is None or expected not in (None, token):
        raise ValueError(f"expected {expected}, got {token}")
    return tokens.popleft()


def _starts_factor(token) -> bool:
    return token is not None and (token[0].isdigit() or token[0] in ".({" or token.isalpha()
                                  or token in ("\\frac", "\\sqrt", "\\pi", "\\infty") or token[1:] in _FUNCTIONS)


def _peek(tokens):
    return tokens[0] if tokens else None


def _expression(tokens, shift, depth):
    if depth > 60:
        raise ValueError("nested too deeply")
    value = _term(tokens, shift, depth)
    while _peek(tokens) in ("+", "-"):
        value = value + _term(tokens, shift, depth) if _take(tokens) == "+" else value - _term(tokens, shift, depth)
    return value


def _term(tokens, shift, depth):
    value = _signed(tokens, shift, depth)
    while _peek(tokens) in ("*", "/") or _starts_factor(_peek(tokens)):
        operator = _take(tokens) if _peek(tokens) in ("*", "/") else "*"  # 2\sqrt{3}, (a+5)(b+2): implied products
        right = _signed(tokens, shift, depth)
        value = value * right if operator == "*" else value / right
    return value


def _signed(tokens, shift, depth):
    if _peek(tokens) in ("-", "+"):
        return -_signed(tokens, shift, depth + 1) if _take(tokens) == "-" else _signed(tokens, shift, depth + 1)
    return _power_term(tokens, shift, depth)


def _power_term(tokens, shift, depth):
    """A primary with its exponent: 2^{10}, x^2, (a+b)^3."""
    base = _primary(tokens, shift, depth + 1)
    if _peek(tokens) == "^":
        _take(tokens)
        return _power(base, _argument(tokens, shift, depth + 1))
    return base


def _power(base, exponent):
    """base^exponent, exact when both are rational and the exponent whole (and the result not huge)."""
    if isinstance(base, Fraction) and isinstance(exponent, Fraction) and exponent.denominator == 1:
        bits = max(base.numerator.bit_length(), base.denominator.bit_length()) * abs(exponent.numerator)
        if bits <= _MAX_EXACT_BITS:
            return base ** exponent.numerator
    return complex(base) ** complex(exponent)


def _numeral(token: str):
    """7, 2.5 or 1.5e3 as an exact Fraction; an e-notation exponent past ±300 in floating point (inf or 0), since
    Fraction("1e999999999") would build 10^999999999 digit by digit and stall the reward for good."""
    exponent = token.lower().partition("e")[2]
    if exponent and abs(int(exponent)) > 300:
        return complex(float(token))
    return Fraction(token)


def _argument(tokens, shift, depth, whole_number=False):
    """A LaTeX argument: {…}, or one token; `\\frac34` and `x^25` take one digit, `\\sqrt51` the number."""
    token = _peek(tokens)
    if token == "{":
        _take(tokens)
        value = _expression(tokens, shift, depth + 1)
        _take(tokens, "}")
        return value
    if token == "-":
        _take(tokens)
        return -_argument(tokens, shift, depth + 1, whole_number)
    if token is not None and token.isdigit() and len(token) > 1 and not whole_number:
        tokens[0] = token[1:]
        return Fraction(int(token[0]))
    return _primary(tokens, shift, depth + 1)


def _primary(tokens, shift, depth):
    if depth > 60:
        raise ValueError("nested too deeply")
    token = _take(tokens)
    if token in ("(", "[", "{"):
        value = _expression(tokens, shift, depth + 1)
        _take(tokens, {"(": ")", "[": "]", "{": "}"}[token])
        return value
    if token[0].isdigit() or token[0] == ".":
        return _numeral(token)
    if token == "\\frac":
        numerator = _argument(tokens, shift, depth)
        return numerator / _argument(tokens, shift, depth)
    if token == "\\sqrt":
        index = Fraction(2)
        if _peek(tokens) == "[":
            _take(tokens)
            index = _expression(tokens, shift, depth + 1)
            _take(tokens, "]")
        return complex(_argument(tokens, shift, depth, whole_number=True)) ** (1 / complex(index))
    if token[1:] in _FUNCTIONS:
        return _function(token[1:], tokens, shift, depth)
    constants = {"\\pi": math.pi, "\\infty": math.inf, "i": 1j, "e": math.e}
    if token in constants:
        return complex(constants[token])
    if token.isalpha():
        return complex(math.sqrt(ord(token)) / 3 + shift)
    raise ValueError(f"cannot read {token!r}")


def _function(name, tokens, shift, depth):
    """\\sin x, \\cos^2 x, \\ln(2), \\sin 2x = sin(2x)."""
    exponent = None
    if _peek(tokens) == "^":
        _take(tokens)
        exponent = _argument(tokens, shift, depth)
    argument = _power_term(tokens, shift, depth + 1)
    while _starts_factor(_peek(tokens)) and _peek(tokens)[1:] not in _FUNCTIONS and _peek(tokens) != "(":
        argument *= _power_term(tokens, shift, depth + 1)
    value = _FUNCTIONS[name](complex(argument))
    return value if exponent is None else value ** complex(exponent)


def closing_brackets(text: str, opens: str = "([{", closes: str = ")]}") -> dict[int, int]:
    """{index of an opening bracket: index of the bracket that closes it}, one pass with a stack, O(len). Any
    closer closes the innermost opener, so the interval "(1, 2]" is one bracket; unclosed openers are left out."""
    closing, stack = {}, []
    for i, char in enumerate(text):
        if char in opens:
            stack.append(i)
        elif char in closes and stack:
            closing[stack.pop()] = i
    return closing
