"""Golden tests from the bytes in docs/datacenter.md §Verified vectors: R's captured frame, D's ECB
ciphertext and Q's recorded SUPCON challenge. Every AES backend must pass them."""

from __future__ import annotations

import pytest

from collector.uplink import crypto
from collector.uplink.crypto import decrypt, encrypt, login_digest
from collector.uplink.frame import crc16_xmodem, decode_frame, encode_frame
from collector.uplink.messages import Common, LoginRequest, LoginResult, parse
from collector.uplink.variant import Variant

BACKENDS = ["pure-python"] + (["cryptography"] if crypto.BACKEND == "cryptography" else [])

# R: RenewEDSenderM Program.cs (code-index file 15049711312), the string ``s`` + "55aa55aa".
R_FRAME = bytes.fromhex(
    "68681616e40000001692ec42AD4E729DCD81551ABC7C2983C86D3C6A58A862EAB7762371A0F6A3C83FBDC8EC79D5"
    "4004F3249D83EE1D8BBE3C906270C99C44D6CF4C7B049B643A7DA312DCC0C5600F18FBB91ADF460802532B9FD2C7"
    "66EC60477242D78F9CAA0092DA2F1B0492D92951E9EF1E68096B7EA76C41ABF30EB177D316196693D66C3C8AB2C7"
    "67ED461BABF65A472C57DE9C972B10EDE61E916F38D678C48ED447928E77EF77798D71F71B29AA4A2542C866B4A6"
    "23FDC6F8838B2D3AD851EC9091C029072A49BB9DDFCCF2831858E339FE73534A65432E5AC65F3E0DF735510BCD64"
    "F8B7C2B1F2646441"
    "55aa55aa"
)
R_KEY = b"0000000000123456"
R_TEXT = (
    b'<?xml version="1.0" encoding="utf-8" ?><root><common><project_id>110000015</project_id>'
    b"<gateway_id>1100000140202</gateway_id><type>request</type></common>"
    b'<id_validate operation="request" ></id_validate></root>'
)
R_VARIANT = Variant(crc_span="head", crc_order="big", aes_mode="cbc", padding="ascii0", id_tag="project_id")

# D: daq-iot "Appendix 2 Collector Communication Protocol" (zhihu p/1921890797525140263).
D_CIPHER = bytes.fromhex(
    "1224FE967F74404694D77C944945B594701DEFC2188624BA6589C8115AA7C98F644B46E9F39F186D3A6D67692CBC"
    "9B65F13FBA22A1022EB9D1E3724D1DE48AE868958738368E80022A1748EB008648BFAE0E62F57CAD266DD65CD37F"
    "FA8B5727BC8A90DA4FBCB11F6EB437B5D1A808CC7ABDDC9AB972AA03EB252B28D9D2AC186E206B9ED5A32F01D492"
    "1EC898CEB09962A6EE96453A5F91A499FA565F3E27AD4267E364B307C871D91482F1D1F0CA5543F3738CB8B80AC8"
    "72AD4DA7917A4C9D"
)
D_KEY = b"aes.modeaes.mode"
D_TEXT = (
    b"<root><common><building_id>420100A002</building_id><gateway_id>01</gateway_id><type>result</type>"
    b'</common><id_validate operation="result"><result>pass</result></id_validate></root>'
)
D_VARIANT = Variant(aes_mode="ecb", padding="pkcs7", xml_declaration=False)


def test_crc_check_value() -> None:
    assert crc16_xmodem(b"123456789") == 0x31C3


def test_r_frame_decodes_with_its_crc_over_head_to_data_big_endian() -> None:
    frame = decode_frame(R_FRAME, Variant(crc_strict=True))
    assert frame.seq == 0x42EC9216
    assert len(frame.payload) == 224
    assert str(frame.crc_form) == "span head, big-endian"


@pytest.mark.parametrize("backend", BACKENDS)
def test_r_frame_decrypts_to_its_login_request(backend: str) -> None:
    frame = decode_frame(R_FRAME, R_VARIANT)
    assert decrypt(frame.payload, R_KEY, R_VARIANT, backend) == R_TEXT
    packet = parse(R_TEXT, R_VARIANT)
    assert packet.common == Common("110000015", "1100000140202")
    assert packet.message == LoginRequest()


@pytest.mark.parametrize("backend", BACKENDS)
def test_r_frame_is_reproduced_byte_for_byte(backend: str) -> None:
    payload = encrypt(R_TEXT, R_KEY, R_VARIANT, backend)
    assert encode_frame(payload, 0x42EC9216, R_VARIANT) == R_FRAME


@pytest.mark.parametrize("backend", BACKENDS)
def test_d_ecb_ciphertext(backend: str) -> None:
    assert decrypt(D_CIPHER, D_KEY, D_VARIANT, backend) == D_TEXT
    assert encrypt(D_TEXT, D_KEY, D_VARIANT, backend) == D_CIPHER
    packet = parse(D_TEXT, D_VARIANT)
    assert packet.common == Common("420100A002", "01")
    assert packet.message == LoginResult(True, text="pass")


def test_q_recorded_supcon_challenge_is_key_then_sequence() -> None:
    # Q src/Device.js@8fb3376:16 (md5Salt '12345') and :29 (46217562 eb6c95f7…)
    v = Variant(md5_order="key+sequence")
    assert login_digest("46217562", b"12345", v) == "eb6c95f789d5a6872b89a7806c6c71ed"
    assert login_digest("46217562", b"12345", Variant(md5_order="key+sequence", md5_case="upper")) == (
        "EB6C95F789D5A6872B89A7806C6C71ED"
    )
    assert login_digest("46217562", b"12345", Variant(md5_order="sequence+key")) != "eb6c95f789d5a6872b89a7806c6c71ed"


def test_fips_197_block() -> None:
    from collector.uplink._aes import AES128

    aes = AES128(bytes(range(16)))
    block = bytes.fromhex("00112233445566778899aabbccddeeff")
    assert aes.encrypt_block(block).hex() == "69c4e0d86a7b0430d8cdb78070b4c55a"
    assert aes.decrypt_block(aes.encrypt_block(block)) == block
