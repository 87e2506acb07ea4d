"""neonize's own protobuf objects → protocol events, and the messages built without Go.

Events are built with neonize's classes and round-tripped through bytes the way Go hands them
over (proto2 required fields → SerializePartialToString); nothing here calls into Go.
"""

from __future__ import annotations

import base64
import logging

import pytest

_root = logging.getLogger()
_handlers, _level = list(_root.handlers), _root.level
from neonize.proto import Neonize_pb2 as N  # noqa: E402  (loads neonize, which configures logging)
from neonize.proto.waCommon.WACommon_pb2 import MessageKey  # noqa: E402
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (  # noqa: E402
    AudioMessage,
    ContactMessage,
    ContextInfo,
    DocumentMessage,
    ExtendedTextMessage,
    FutureProofMessage,
    ImageMessage,
    LiveLocationMessage,
    LocationMessage,
    Message,
    ProtocolMessage,
    ReactionMessage,
    StickerMessage,
    VideoMessage,
)

from whatsdex.sessions import protocol  # noqa: E402
from whatsdex.sessions.engines import neonize_translate as t  # noqa: E402

# Importing neonize calls logging.basicConfig: give the rest of the suite its logging back.
_root.handlers[:] = _handlers
_root.setLevel(_level)

PHONE = "15551234567"
LID = "202012345678901"
ME = "15559990000"
GROUP = "120363012345678901"
EMPTY = N.JID(User="", Server="", RawAgent=0, Device=0, Integrator=0, IsEmpty=True)


def jid(user: str, server: str = t.PHONE_SERVER, device: int = 0) -> N.JID:
    return N.JID(User=user, Server=server, RawAgent=0, Device=device, Integrator=0,
                 IsEmpty=False)


def message_event(
    message: Message,
    *,
    chat: N.JID | None = None,
    sender: N.JID | None = None,
    sender_alt: N.JID = EMPTY,
    recipient_alt: N.JID = EMPTY,
    from_me: bool = False,
    is_group: bool = False,
    wa_id: str = "3EB0C767D26A1D8F5C2A",
    timestamp: int = 1_700_000_000_123,
    push_name: str = "Ann",
) -> N.Message:
    """A MessageEv as Go sends it: every JID field present, empty ones included."""
    sender = sender or jid(PHONE, device=3)
    event = N.Message(
        Info=N.MessageInfo(
            ID=wa_id, Timestamp=timestamp, Pushname=push_name, Type="text",
            MessageSource=N.MessageSource(
                Chat=chat or jid(PHONE), Sender=sender, IsFromMe=from_me, IsGroup=is_group,
                SenderAlt=sender_alt, RecipientAlt=recipient_alt, BroadcastListOwner=EMPTY,
            ),
        ),
        Message=message,
    )
    return N.Message.FromString(event.SerializePartialToString())


def translate(message: Message, **kwargs: object) -> protocol.InboundMessage:
    result = t.inbound_message("ses_1", message_event(message, **kwargs))  # type: ignore[arg-type]
    assert result is not None
    return result


# -- senders, chats and timestamps ----------------------------------------------------------------


def test_plain_text_from_a_phone_number() -> None:
    got = translate(Message(conversation="hello"), sender_alt=jid(LID, "lid"))
    assert got.session == "ses_1"
    assert got.wa_id == "3EB0C767D26A1D8F5C2A"
    assert (got.kind, got.text) == ("text", "hello")
    assert got.sender == protocol.Person(jid=f"{PHONE}@s.whatsapp.net", lid=f"{LID}@lid",
                                         phone=PHONE)  # the device part (:3) is dropped
    assert got.chat == got.sender
    assert got.timestamp_ms == 1_700_000_000_123
    assert got.push_name == "Ann"
    assert (got.from_me, got.is_group, got.quoted_id) == (False, False, "")


def test_lid_sender_gets_its_phone_number_from_sender_alt() -> None:
    got = translate(Message(conversation="hi"), chat=jid(LID, "lid"),
                    sender=jid(LID, "lid", device=12), sender_alt=jid(PHONE))
    expected = protocol.Person(jid=f"{PHONE}@s.whatsapp.net", lid=f"{LID}@lid", phone=PHONE)
    assert got.sender == expected
    assert got.chat == expected


def test_lid_sender_without_a_known_phone_number() -> None:
    got = translate(Message(conversation="hi"), chat=jid(LID, "lid"), sender=jid(LID, "lid"))
    assert got.sender == protocol.Person(jid=f"{LID}@lid", lid=f"{LID}@lid")
    assert got.sender.phone == ""


def test_group_message_from_a_lid_participant() -> None:
    got = translate(Message(conversation="morning all"), chat=jid(GROUP, "g.us"),
                    sender=jid(LID, "lid", device=2), sender_alt=jid(PHONE), is_group=True)
    assert got.is_group
    assert got.chat == protocol.Person(jid=f"{GROUP}@g.us")
    assert got.sender.phone == PHONE
    assert got.sender.lid == f"{LID}@lid"


def test_message_sent_from_the_phone_itself_uses_recipient_alt_for_the_chat() -> None:
    got = translate(Message(conversation="sent from my phone"), chat=jid(LID, "lid"),
                    sender=jid(ME, device=0), recipient_alt=jid(PHONE), from_me=True)
    assert got.from_me
    assert got.chat == protocol.Person(jid=f"{PHONE}@s.whatsapp.net", lid=f"{LID}@lid",
                                       phone=PHONE)
    assert got.sender == protocol.Person(jid=f"{ME}@s.whatsapp.net", phone=ME)


def test_seconds_timestamps_become_milliseconds() -> None:
    assert translate(Message(conversation="x"), timestamp=1_700_000_000).timestamp_ms == (
        1_700_000_000_000)
    assert t.to_ms(1_700_000_000_456) == 1_700_000_000_456


def test_event_without_an_id_is_not_a_message() -> None:
    assert t.inbound_message("ses_1", message_event(Message(conversation="x"), wa_id="")) is None


# -- kinds ----------------------------------------------------------------------------------------


def test_quoted_reply() -> None:
    message = Message(extendedTextMessage=ExtendedTextMessage(
        text="yes, that one", contextInfo=ContextInfo(
            stanzaID="3EB0QUOTED", participant=f"{ME}@s.whatsapp.net",
            quotedMessage=Message(conversation="which one?"))))
    got = translate(message)
    assert (got.kind, got.text, got.quoted_id) == ("text", "yes, that one", "3EB0QUOTED")


def _media_message(got: protocol.InboundMessage) -> Message:
    return Message.FromString(base64.b64decode(got.media["message"]))


def test_image_with_caption_keeps_what_a_download_needs() -> None:
    image = ImageMessage(
        URL="https://mmg.whatsapp.net/x", directPath="/v/t62/abc", mediaKey=b"k" * 32,
        fileEncSHA256=b"e" * 32, fileSHA256=bytes(range(32)), fileLength=48213,
        mimetype="image/jpeg", caption="the menu", width=800, height=600,
        JPEGThumbnail=b"\xff\xd8" + b"t" * 500,
        contextInfo=ContextInfo(stanzaID="3EB0Q", quotedMessage=Message(conversation="q")),
    )
    got = translate(Message(imageMessage=image))
    assert (got.kind, got.text, got.quoted_id) == ("image", "the menu", "3EB0Q")
    media = got.media
    assert media["type"] == "image"
    assert media["mimetype"] == "image/jpeg"
    assert media["size"] == 48213
    assert media["sha256"] == bytes(range(32)).hex()
    assert (media["caption"], media["width"], media["height"]) == ("the menu", 800, 600)
    stored = _media_message(got).imageMessage
    assert stored.directPath == "/v/t62/abc"
    assert stored.mediaKey == b"k" * 32
    assert stored.fileEncSHA256 == b"e" * 32
    # The quote and the thumbnail are not needed to download, and would bloat the inbox.
    assert not stored.HasField("contextInfo")
    assert not stored.HasField("JPEGThumbnail")


def test_video_voice_note_document_and_sticker() -> None:
    video = translate(Message(videoMessage=VideoMessage(
        mimetype="video/mp4", fileLength=10, fileSHA256=b"v", seconds=12, caption="clip")))
    assert (video.kind, video.text, video.media["seconds"]) == ("video", "clip", 12)

    voice = translate(Message(audioMessage=AudioMessage(
        mimetype="audio/ogg; codecs=opus", fileLength=5, fileSHA256=b"a", seconds=7, PTT=True)))
    assert voice.kind == "audio"
    assert voice.media["voice_note"] is True
    assert voice.media["seconds"] == 7
    assert _media_message(voice).audioMessage.PTT

    document = translate(Message(documentMessage=DocumentMessage(
        mimetype="application/pdf", fileLength=99, fileSHA256=b"d", fileName="invoice.pdf",
        title="Invoice", caption="for March")))
    assert (document.kind, document.text) == ("document", "for March")
    assert document.media["filename"] == "invoice.pdf"
    assert document.media["title"] == "Invoice"

    sticker = translate(Message(stickerMessage=StickerMessage(
        mimetype="image/webp", fileLength=3, fileSHA256=b"s", isAnimated=True)))
    assert sticker.kind == "sticker"
    assert sticker.media["animated"] is True
    assert sticker.text == ""


def test_document_with_caption_wrapper_is_unwrapped() -> None:
    inner = Message(documentMessage=DocumentMessage(fileName="a.txt", caption="see attached"))
    got = translate(Message(documentWithCaptionMessage=FutureProofMessage(message=inner)))
    assert (got.kind, got.text, got.media["filename"]) == ("document", "see attached", "a.txt")


def test_ephemeral_and_view_once_wrappers_are_unwrapped() -> None:
    inner = Message(conversation="this disappears")
    got = translate(Message(ephemeralMessage=FutureProofMessage(message=inner)))
    assert (got.kind, got.text) == ("text", "this disappears")
    once = Message(imageMessage=ImageMessage(mimetype="image/jpeg", viewOnce=True))
    nested = Message(ephemeralMessage=FutureProofMessage(
        message=Message(viewOnceMessageV2=FutureProofMessage(message=once))))
    assert translate(nested).kind == "image"


def test_location_and_live_location() -> None:
    got = translate(Message(locationMessage=LocationMessage(
        degreesLatitude=48.8584, degreesLongitude=2.2945, name="Eiffel Tower",
        address="Champ de Mars")))
    assert (got.kind, got.text) == ("location", "Eiffel Tower")
    assert got.location == {"latitude": 48.8584, "longitude": 2.2945, "name": "Eiffel Tower",
                            "address": "Champ de Mars", "live": False}
    live = translate(Message(liveLocationMessage=LiveLocationMessage(
        degreesLatitude=1.5, degreesLongitude=-2.5, caption="on my way")))
    assert live.kind == "location"
    assert live.location["live"] is True
    assert live.text == "on my way"


def test_reaction_and_its_removal() -> None:
    key = MessageKey(remoteJID=f"{PHONE}@s.whatsapp.net", fromMe=True, ID="3EB0MINE")
    got = translate(Message(reactionMessage=ReactionMessage(key=key, text="👍")))
    assert (got.kind, got.reaction_to, got.reaction) == ("reaction", "3EB0MINE", "👍")
    removed = translate(Message(reactionMessage=ReactionMessage(key=key, text="")))
    assert (removed.kind, removed.reaction_to, removed.reaction) == ("reaction", "3EB0MINE", "")


def test_edit_wrapped_as_whatsmeow_delivers_it() -> None:
    edit = ProtocolMessage(
        key=MessageKey(remoteJID=f"{PHONE}@s.whatsapp.net", fromMe=False, ID="3EB0ORIGINAL"),
        type=ProtocolMessage.MESSAGE_EDIT,
        editedMessage=Message(extendedTextMessage=ExtendedTextMessage(text="fixed typo")),
    )
    got = translate(Message(editedMessage=FutureProofMessage(
        message=Message(protocolMessage=edit))))
    assert (got.kind, got.edited_id, got.text) == ("edit", "3EB0ORIGINAL", "fixed typo")
    plain = translate(Message(protocolMessage=edit))
    assert (plain.kind, plain.edited_id) == ("edit", "3EB0ORIGINAL")


def test_revoke_is_a_deletion() -> None:
    revoke = ProtocolMessage(key=MessageKey(ID="3EB0GONE"), type=ProtocolMessage.REVOKE)
    got = translate(Message(protocolMessage=revoke))
    assert (got.kind, got.deleted_id, got.text) == ("delete", "3EB0GONE", "")


def test_everything_else_is_other() -> None:
    contact = translate(Message(contactMessage=ContactMessage(displayName="Bob", vcard="x")))
    assert (contact.kind, contact.text, contact.media) == ("other", "", {})
    history = translate(Message(protocolMessage=ProtocolMessage(
        type=ProtocolMessage.HISTORY_SYNC_NOTIFICATION)))
    assert history.kind == "other"


# -- receipts -------------------------------------------------------------------------------------


def receipt(kind: int | None, *, group: bool = False, stamp: int = 1_700_000_100) -> N.Receipt:
    source = N.MessageSource(
        Chat=jid(GROUP, "g.us") if group else jid(PHONE), Sender=jid(LID, "lid", device=1),
        SenderAlt=jid(PHONE), IsFromMe=False, IsGroup=group, RecipientAlt=EMPTY,
        BroadcastListOwner=EMPTY)
    event = N.Receipt(MessageSource=source, MessageIDs=["3EB0A", "3EB0B"], Timestamp=stamp)
    if kind is not None:
        event.Type = kind
    return N.Receipt.FromString(event.SerializePartialToString())


@pytest.mark.parametrize(("kind", "status"), [
    (N.Receipt.DELIVERED, "delivered"), (N.Receipt.READ, "read"), (N.Receipt.PLAYED, "played"),
])
def test_delivered_read_and_played_receipts(kind: int, status: str) -> None:
    got = t.receipt_event("ses_1", receipt(kind))
    assert got is not None
    assert got.status == status
    assert got.message_ids == ["3EB0A", "3EB0B"]
    assert got.timestamp_ms == 1_700_000_100_000  # receipts come in seconds
    assert got.sender == protocol.Person(jid=f"{PHONE}@s.whatsapp.net", lid=f"{LID}@lid",
                                         phone=PHONE)
    assert got.chat.phone == PHONE


def test_group_receipt_names_the_group_and_the_reader() -> None:
    got = t.receipt_event("ses_1", receipt(N.Receipt.READ, group=True))
    assert got is not None
    assert got.chat == protocol.Person(jid=f"{GROUP}@g.us")
    assert got.sender.phone == PHONE


@pytest.mark.parametrize("kind", [
    N.Receipt.RETRY, N.Receipt.SENDER, N.Receipt.READ_SELF, N.Receipt.SERVER_ERROR,
    N.Receipt.INACTIVE, None,  # None: a type neonize could not map arrives unset
])
def test_other_receipt_kinds_are_ignored(kind: int | None) -> None:
    assert t.receipt_event("ses_1", receipt(kind)) is None


# -- connection events ----------------------------------------------------------------------------


def test_connected_and_paired_use_the_device_ids_without_device_part() -> None:
    me = N.Device.FromString(N.Device(
        JID=jid(ME, device=14), LID=jid(LID, "lid", device=14), PushName="Shop",
        Platform="", BussinessName="", Initialized=True).SerializePartialToString())
    assert t.connected("ses_1", me) == protocol.Connected(
        session="ses_1", jid=f"{ME}@s.whatsapp.net", lid=f"{LID}@lid", push_name="Shop")
    success = N.PairStatus(ID=jid(ME, device=14), Platform="android", BusinessName="",
                           Status=N.PairStatus.SUCCESS)
    assert t.pair_status("ses_1", success, me) == protocol.Paired(
        session="ses_1", jid=f"{ME}@s.whatsapp.net", lid=f"{LID}@lid", push_name="Shop",
        platform="android")
    failure = N.PairStatus(ID=EMPTY, Status=N.PairStatus.ERROR, Error="bad signature")
    assert t.pair_status("ses_1", failure, None) == protocol.PairFailed(
        session="ses_1", reason="bad signature")


def test_connect_failures_say_whether_to_retry() -> None:
    outdated = N.ConnectFailure(Reason=N.CLIENT_OUTDATED, Message="")
    reason, retryable, reconnecting = t.connect_failure(outdated)
    assert "outdated" in reason
    assert (retryable, reconnecting) == (False, False)
    unavailable = N.ConnectFailure(Reason=N.SERVICE_UNAVAILABLE, Message="try later")
    reason, retryable, reconnecting = t.connect_failure(unavailable)
    assert reason.endswith("try later")
    assert (retryable, reconnecting) == (True, True)
    raw = N.ConnectFailure(Message="418").SerializePartialToString()  # no Reason: unmapped
    unknown = N.ConnectFailure.FromString(raw)
    assert t.connect_failure(unknown)[1:] == (True, False)


def test_logout_ban_and_stream_error_reasons() -> None:
    assert t.logged_out_reason(N.LoggedOut(OnConnect=True, Reason=N.LOGGED_OUT)) == (
        "the device was removed from the phone (while connecting)")
    ban = N.TemporaryBan(Code=N.TemporaryBan.BLOCKED_BY_USERS, Expire=3600)
    assert t.ban("ses_1", ban) == protocol.TemporaryBan(session="ses_1", code=2,
                                                        expires_in=3600.0)
    assert t.ban_reason(ban) == "blocked by too many users"
    assert "516" in t.stream_error_reason(N.StreamError(Code="516"))


def test_failed_first_connects_read_clearly() -> None:
    dns = ('failed to dial whatsapp web websocket: failed to WebSocket dial: failed to send '
           'handshake request: Get "https://web.whatsapp.com/ws/chat": dial tcp: lookup '
           'web.whatsapp.com on 10.0.0.53:53: no such host')
    reason, retryable = t.dial_failure(dns)
    assert reason.startswith("cannot resolve WhatsApp's address")
    assert retryable
    assert t.dial_failure("... context deadline exceeded")[0].startswith(
        "connecting to WhatsApp timed out")
    store = t.dial_failure("failed to upgrade database: foreign keys are not enabled")
    assert store[0].startswith("the number's store file cannot be used")
    assert store[1] is False
    assert t.dial_failure("database is locked")[1] is True


# -- outgoing -------------------------------------------------------------------------------------


def test_addresses() -> None:
    assert t.jid_string(t.parse_address("15551234567")) == "15551234567@s.whatsapp.net"
    assert t.jid_string(t.parse_address("+15551234567")) == "15551234567@s.whatsapp.net"
    assert t.jid_string(t.parse_address(f"{LID}@lid")) == f"{LID}@lid"
    assert t.jid_string(t.parse_address("120363-1700000000@g.us")) == "120363-1700000000@g.us"
    for bad in ("", "hello", "1555@example.com", "abc@s.whatsapp.net", "@g.us",
                "15551234567:3@s.whatsapp.net"):
        with pytest.raises(ValueError, match="not a WhatsApp address"):
            t.parse_address(bad)


def test_text_is_never_parsed_for_mentions() -> None:
    message = t.text_message("call @15551234567 or see @120363012345678901@g.us")
    assert message.conversation == "call @15551234567 or see @120363012345678901@g.us"
    assert not message.HasField("extendedTextMessage")


def test_quoted_reply_carries_the_id_and_author() -> None:
    quote = t.quote_context("3EB0ORIGINAL", f"{PHONE}@s.whatsapp.net")
    message = t.text_message("answer", quote)
    text = message.extendedTextMessage
    assert text.text == "answer"
    assert text.contextInfo.stanzaID == "3EB0ORIGINAL"
    assert text.contextInfo.participant == f"{PHONE}@s.whatsapp.net"
    assert not text.contextInfo.mentionedJID


def test_reactions_name_the_author_only_in_groups() -> None:
    direct = t.reaction_message(jid(PHONE), "3EB0X", "❤️", from_me=False,
                                author=jid(PHONE)).reactionMessage
    assert (direct.key.remoteJID, direct.key.ID, direct.key.fromMe) == (
        f"{PHONE}@s.whatsapp.net", "3EB0X", False)
    assert not direct.key.HasField("participant")
    assert direct.text == "❤️"
    assert direct.senderTimestampMS > 1_700_000_000_000
    group = t.reaction_message(jid(GROUP, "g.us"), "3EB0Y", "", from_me=False,
                               author=jid(LID, "lid", device=4)).reactionMessage
    assert group.key.participant == f"{LID}@lid"
    assert group.text == ""  # removes the reaction
    mine = t.reaction_message(jid(GROUP, "g.us"), "3EB0Z", "🎉", from_me=True).reactionMessage
    assert mine.key.fromMe
    assert not mine.key.HasField("participant")


def test_location_message() -> None:
    message = t.location_message(1.25, 103.75, "Office").locationMessage
    assert (message.degreesLatitude, message.degreesLongitude, message.name) == (
        1.25, 103.75, "Office")
