"""The engines that generate tokens for queued requests, behind one Protocol and registered by name.

:mod:`.base` holds the :class:`~.base.Engine` Protocol, the :class:`~.base.Job` values engines take and the
event helpers they share; :mod:`.registry` names the engines (``static`` :mod:`.static`, ``continuous``
:mod:`.continuous`, ``transformers`` :mod:`.transformers`), one line each; :mod:`.generation` holds the model
loading and token choice they share.
"""
