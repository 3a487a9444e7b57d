"""HL7 v2: MLLP transport, parsing, acknowledgements and mapping to adapter events.

The public surface, left to right along a message's path:

- ``hl7.mllp``: ``frame``, ``FrameDecoder``, ``MLLPServer``, ``server_ssl_context``
- ``hl7.header``: ``read_header`` (fast MSH reader), ``decode`` (bytes → text per MSH-18)
- ``hl7.ack``: ``build_ack``, ``build_reject_for_unreadable``, ``AckCode``, ``AckError``
- ``hl7.message``: ``parse`` (light parser), ``unescape``, ``escape``
- ``hl7.mapping``: ``map_message`` (text → adapter events)
- ``hl7.facilities``: ``load_facilities`` (``config/facilities.yaml``)
- ``hl7.client``: ``split_messages``, ``split_file``, ``send_messages``, ``MLLPConnection``
- ``hl7.errors``: ``HL7Error`` and its children

Submodules are imported where used, so that reading a header does not load
pydantic or phonenumbers.
"""
