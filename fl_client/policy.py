"""Which privacy policy this client holds: its own file on a device, the run's settings in a simulation.

A device (a SuperNode started by ``fedproof client``) reads ``privacy-policy`` from its node config: the kit's
``policy.json``. A device started without one gets the strict defaults. The run's settings (what the server sends)
never choose the file. In a simulation every dataset is the operator's, who also sets the run: simulated
clients (no ``client-id`` in their node config) take the run's own settings as their policy.
"""

from __future__ import annotations

import math

from flwr.app import Context

from fedproof.core.config import RunConfig
from fl_client.device import Device
from privacy.policy import PrivacyPolicy


def client_policy(config: RunConfig, context: Context) -> PrivacyPolicy:
    device = Device.of(context)
    if device.policy is not None:
        return PrivacyPolicy.load(device.policy)
    if device.on_device:  # a device with no policy file: the strictest defaults
        return PrivacyPolicy()
    return run_policy(config)


def run_policy(config: RunConfig) -> PrivacyPolicy:
    """A policy that admits exactly ``config``'s privacy settings (a simulation's data holders)."""
    clip = config.update_clip if config.privacy == "user" else config.max_grad_norm
    return PrivacyPolicy(dp_required=config.dp, max_epsilon=config.target_epsilon or math.inf,
                         max_delta=config.delta, min_clip=clip, max_clip=clip, he_required=config.he,
                         release_metrics=not config.dp, min_contributors=config.min_contributors,
                         max_participation=config.participation,
                         colluding_share=config.colluding_share)


def federation_size(config: RunConfig, context: Context, registered: int) -> int:
    """How many clients a threshold key should be held by a majority of: a device counts the clients registered on
    its own allow-list; a simulated client (the operator's) counts the run's clients, since a simulation's key set
    is reused by later runs with other numbers of clients."""
    return registered if Device.of(context).on_device else config.clients
