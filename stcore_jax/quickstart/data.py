"""The quickstart's embedded dataset: short help-desk requests, written for this project.

The notion of similarity here is "the same request": two messages are similar when the same action
would resolve them. General-purpose embeddings get this partly wrong, because requests that share
words but need different actions ("cancel my order" / "cancel my subscription", "change my email" /
"change my delivery address") look alike on the surface, while rewordings of one request often
share few words. Fine-tuning on scored pairs teaches the distinction.

16 intents in 4 topics, 10 phrasings each. Phrasings 0-5 of every intent make the training pairs,
phrasings 6-9 the held-out evaluation pairs, so evaluation measures sentences never seen in training.
Scores: 1.0 same intent, 0.2 same topic but a different intent, 0.0 different topics.
"""

from __future__ import annotations

import itertools

N_TRAIN_PHRASINGS = 6

# topic -> intent -> phrasings
REQUESTS = {
    "account": {
        "reset_password": [
            "I forgot my password and cannot log in.",
            "How do I reset my password?",
            "Please send me a password reset link.",
            "I can't remember my login password.",
            "My password doesn't work anymore, I need a new one.",
            "Help me set a new password, I lost the old one.",
            "I need to reset the password on my account.",
            "The login page says my password is wrong and I don't remember it.",
            "Can you help me recover my forgotten password?",
            "Send a reset email so I can choose another password.",
        ],
        "unlock_account": [
            "My account is locked after too many attempts.",
            "I've been locked out of my account.",
            "Please unlock my account.",
            "The system blocked my account after failed logins.",
            "It says my account is temporarily locked.",
            "My user account got locked, can you unblock it?",
            "Too many wrong tries and now the account is blocked.",
            "Can you lift the lock on my account?",
            "I'm locked out and the account shows as suspended.",
            "After several failed sign-ins my account was frozen.",
        ],
        "delete_account": [
            "Please delete my account permanently.",
            "I want to close my account and remove my data.",
            "How can I remove my account for good?",
            "Erase my profile and all my personal information.",
            "I no longer want an account with you, please close it.",
            "Cancel my account and delete everything.",
            "Please shut down my account completely.",
            "I'd like my user profile removed from your service.",
            "Permanently erase my account and its data.",
            "Close my account, I won't be using it again.",
        ],
        "change_email": [
            "I need to change the email address on my account.",
            "How do I update my email?",
            "Please switch my contact email to a new address.",
            "My email address changed, can you update it?",
            "I want notifications sent to a different email.",
            "Update the email linked to my profile.",
            "Replace the old email on my account with my new one.",
            "Can I use another email address for my login?",
            "My account still has my old work email, please change it.",
            "Set a new email address for my profile.",
        ],
    },
    "orders": {
        "track_order": [
            "Where is my order?",
            "When will my package arrive?",
            "Can you give me the tracking number for my order?",
            "My order hasn't shown up yet.",
            "I want to know the delivery status of my parcel.",
            "Has my package shipped yet?",
            "What is the status of my shipment?",
            "I'm still waiting for my delivery, where is it?",
            "Tell me when the parcel will be delivered.",
            "How far along is my order in transit?",
        ],
        "cancel_order": [
            "Please cancel my order.",
            "I want to cancel the order I placed yesterday.",
            "Stop my order before it ships.",
            "I ordered by mistake, please cancel it.",
            "Can I still cancel my purchase?",
            "Don't send the order, I changed my mind.",
            "Cancel the purchase I just made.",
            "I no longer want the items I ordered, please stop the order.",
            "Call off my order before it leaves the warehouse.",
            "Please void the order I submitted this morning.",
        ],
        "return_item": [
            "I want to return an item.",
            "How do I send back a product I bought?",
            "The shoes don't fit, I'd like to return them.",
            "Can I get a return label for my purchase?",
            "I received the wrong size and want to send it back.",
            "What is your return process?",
            "I'd like to ship this product back to you.",
            "The jacket is too small, how do I return it?",
            "Please give me a label to mail the item back.",
            "This item isn't what I expected, I want to return it.",
        ],
        "change_address": [
            "I need to change the delivery address for my order.",
            "Please ship my package to a different address.",
            "I moved, can you update the shipping address on my order?",
            "The delivery address on my order is wrong.",
            "Send my order to my office instead of my home.",
            "Can I redirect my parcel to another address?",
            "Update where my order will be delivered.",
            "I typed the wrong street, please fix the shipping address.",
            "Deliver the package to my new apartment instead.",
            "Change the destination of my shipment.",
        ],
    },
    "billing": {
        "refund_status": [
            "When will I get my refund?",
            "I returned the item but haven't received my money back.",
            "Has my refund been processed?",
            "How long does a refund take?",
            "My refund still hasn't arrived.",
            "I'm waiting for the money you owe me for the return.",
            "Where is the refund for my returned order?",
            "It's been two weeks and the refund isn't in my account.",
            "Did you send my money back yet?",
            "Check on the status of my reimbursement.",
        ],
        "double_charge": [
            "I was charged twice for the same order.",
            "There are two identical payments on my card.",
            "You billed me two times.",
            "My credit card shows a duplicate charge.",
            "I paid once but the money was taken twice.",
            "Why do I see the same payment twice on my statement?",
            "The same amount was debited from my account two times.",
            "Please fix the duplicate payment on my bill.",
            "My bank shows a double charge from your store.",
            "I got charged again for something I already paid.",
        ],
        "update_card": [
            "I need to update my credit card details.",
            "How do I change my payment method?",
            "My card expired, I want to add a new one.",
            "Please replace the card on file.",
            "I want to pay with a different card.",
            "Update the billing card on my account.",
            "Put my new debit card on my account.",
            "The card you have for me is no longer valid, here is a new one.",
            "Switch my payment to another credit card.",
            "I got a new card number, please update my billing info.",
        ],
        "cancel_subscription": [
            "Please cancel my subscription.",
            "I want to stop my monthly plan.",
            "How do I turn off automatic renewal?",
            "Stop charging me every month.",
            "End my membership at the end of this period.",
            "I don't want to renew my plan.",
            "Cancel the recurring payment for my plan.",
            "Unsubscribe me from the premium membership.",
            "I'd like to end my subscription before it renews.",
            "Please stop the auto-renewal on my membership.",
        ],
    },
    "devices": {
        "wifi_down": [
            "My internet is not working.",
            "The wifi keeps disconnecting.",
            "I can't connect to the network.",
            "There is no internet connection in the office.",
            "The router is on but nothing loads.",
            "My laptop won't join the wireless network.",
            "Web pages won't load, the connection seems down.",
            "The wireless signal drops every few minutes.",
            "I have no network access on my computer.",
            "Our office wifi is down again.",
        ],
        "printer": [
            "The printer is not printing.",
            "My print jobs are stuck in the queue.",
            "The printer says there is a paper jam.",
            "Nothing comes out when I print a document.",
            "The office printer shows an error.",
            "I can't print from my computer.",
            "Documents I send to the printer never come out.",
            "The printer is jammed and blinking red.",
            "Printing fails every time I try.",
            "My documents are stuck waiting to print.",
        ],
        "laptop_power": [
            "My laptop won't turn on.",
            "The computer doesn't start when I press the power button.",
            "My notebook is dead even though it's charging.",
            "The screen stays black and the laptop won't boot.",
            "My computer shuts off and won't power back on.",
            "Pressing the power button does nothing.",
            "The laptop is completely unresponsive and won't start up.",
            "My machine won't boot at all.",
            "The computer has no power, no lights, nothing.",
            "My laptop died and won't switch on again.",
        ],
        "slow_computer": [
            "My computer is very slow.",
            "Everything takes forever to open on my laptop.",
            "The machine freezes and lags all the time.",
            "Programs run really slowly since the update.",
            "My PC is sluggish and keeps hanging.",
            "It takes minutes for my computer to respond.",
            "The laptop has become painfully slow.",
            "Apps keep freezing and the system is slow.",
            "My desktop lags whenever I open anything.",
            "The computer crawls and stutters constantly.",
        ],
    },
}

SCORE_SAME_INTENT, SCORE_SAME_TOPIC, SCORE_OTHER = 1.0, 0.2, 0.0
# Different requests in different topics that share their wording: the pairs a general model
# over-scores most.
LOOK_ALIKES = (("cancel_order", "cancel_subscription"), ("delete_account", "cancel_subscription"),
               ("change_email", "change_address"), ("track_order", "refund_status"),
               ("update_card", "change_email"), ("cancel_order", "delete_account"))


def _intents():
    """[(topic, intent, phrasings)] in a fixed order."""
    return [(t, i, p) for t, intents in REQUESTS.items() for i, p in intents.items()]


def pairs(split: str) -> list[tuple[str, str, float]]:
    """Scored pairs ``(sentence1, sentence2, score)`` for ``"train"`` or ``"eval"``, deterministic.

    Per split: every pair of phrasings within an intent (1.0); phrasing k of an intent with phrasing
    k of each other intent in its topic (0.2); phrasing k with phrasing k of the same-position intent
    in each other topic, and of its ``LOOK_ALIKES`` partners (0.0).
    """
    if split not in ("train", "eval"):
        raise ValueError(f"quickstart split must be 'train' or 'eval', got {split!r}")
    sl = slice(0, N_TRAIN_PHRASINGS) if split == "train" else slice(N_TRAIN_PHRASINGS, None)
    intents = [(t, i, p[sl]) for t, i, p in _intents()]
    out = []
    for _, _, ph in intents:
        out += [(a, b, SCORE_SAME_INTENT) for a, b in itertools.combinations(ph, 2)]
    for (ta, _, pa), (tb, _, pb) in itertools.combinations(intents, 2):
        if ta == tb:
            out += [(a, b, SCORE_SAME_TOPIC) for a, b in zip(pa, pb)]
    topics = list(REQUESTS)
    per_topic = len(intents) // len(topics)
    for ta, tb in itertools.combinations(range(len(topics)), 2):
        for pos in range(per_topic):
            pa, pb = intents[ta * per_topic + pos][2], intents[tb * per_topic + pos][2]
            out += [(a, b, SCORE_OTHER) for a, b in zip(pa, pb)]
    by_name = {i: p for _, i, p in intents}
    for ia, ib in LOOK_ALIKES:
        out += [(a, b, SCORE_OTHER) for a, b in zip(by_name[ia], by_name[ib])]
    seen = set()
    return [r for r in out if frozenset(r[:2]) not in seen and not seen.add(frozenset(r[:2]))]


def pairs_dataset(split: str):
    """``datasets.Dataset`` with columns ``sentence1, sentence2, score``."""
    from datasets import Dataset

    rows = pairs(split)
    return Dataset.from_dict({"sentence1": [r[0] for r in rows], "sentence2": [r[1] for r in rows],
                              "score": [r[2] for r in rows]})
