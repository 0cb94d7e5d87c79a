"""The engines that generate tokens for queued requests.

``static`` (:mod:`.static`), ``continuous`` (:mod:`.continuous`) and ``transformers`` (:mod:`.transformers`),
with the model loading and token choice they share (:mod:`.generation`).
"""
