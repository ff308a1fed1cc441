"""Carrier sentences per context type and entity category. `{t}` is the term; numbers are spelled out as spoken.

Three disjoint pools, so a test sentence is never one the model was trained or selected on:
- `TEMPLATES`: training carriers (12 per category, shared by all its terms);
- `VAL_TEMPLATES`: validation carriers (4 per category), never in training;
- `TEST_TEMPLATES`: test carriers (8 per category), in neither. A few test rows per term reuse a training carrier on
  purpose (`carrier_seen: true`), so memorised sentence patterns are measured apart instead of inflating the headline.
"""

CONTEXT_TYPES = ("dictation", "handoff", "chart_note", "history")

TEMPLATES: dict[str, dict[str, list[str]]] = {
    "dictation": {
        "drug": [
            "Start {t} at the usual dose and review in two weeks.",
            "Continue {t} once daily with food.",
            "Discontinue {t} because of side effects.",
        ],
        "condition": [
            "Assessment is consistent with {t}.",
            "Impression: {t}, stable on current management.",
            "Findings are suggestive of {t}.",
        ],
        "procedure": [
            "Plan to schedule a {t} next week.",
            "The {t} was performed without complication.",
            "Recommend {t} for further evaluation.",
        ],
        "anatomy": [
            "Tenderness noted over the {t}.",
            "Imaging of the {t} shows no acute change.",
            "There is swelling involving the {t}.",
        ],
        "lab": [
            "The {t} came back within normal limits.",
            "Repeat the {t} in the morning.",
            "Today's {t} is mildly elevated.",
        ],
    },
    "handoff": {
        "drug": [
            "She got her {t} at six this evening.",
            "Please hold the {t} overnight.",
            "He is due for {t} at midnight.",
        ],
        "condition": [
            "Bed four is admitted with {t}.",
            "Watch him closely, he has known {t}.",
            "Overnight concern is worsening {t}.",
        ],
        "procedure": [
            "She is booked for {t} first thing tomorrow.",
            "He came back from {t} an hour ago.",
            "Consent for the {t} is signed.",
        ],
        "anatomy": [
            "Dressing on the {t} needs changing.",
            "He complains of pain in the {t}.",
            "Keep an eye on the {t} for bleeding.",
        ],
        "lab": [
            "Chase the {t} before the morning round.",
            "The {t} is still pending.",
            "Call the team if the {t} drops further.",
        ],
    },
    "chart_note": {
        "drug": [
            "Medications include {t}.",
            "Allergic reaction to {t} documented.",
            "Dose of {t} adjusted for renal function.",
        ],
        "condition": [
            "Past medical history significant for {t}.",
            "Problem list: {t}.",
            "Diagnosis of {t} confirmed.",
        ],
        "procedure": [
            "Status post {t} last year.",
            "Procedure note: {t}, uneventful.",
            "Referred for {t}.",
        ],
        "anatomy": [
            "Exam of the {t} unremarkable.",
            "Lesion identified on the {t}.",
            "Mild deformity of the {t}.",
        ],
        "lab": [
            "Labs: {t} reviewed.",
            "Abnormal {t} flagged.",
            "Trend the {t} daily.",
        ],
    },
    "history": {
        "drug": [
            "I have been taking {t} for about a year.",
            "My other doctor gave me {t} last month.",
            "I stopped the {t} because it made me dizzy.",
        ],
        "condition": [
            "My mother was diagnosed with {t}.",
            "I was told I have {t} a few years ago.",
            "Could this be {t}, doctor?",
        ],
        "procedure": [
            "I had a {t} about two years ago.",
            "They want me to have a {t}.",
            "Do I really need the {t}?",
        ],
        "anatomy": [
            "The pain starts in my {t}.",
            "Something feels wrong with my {t}.",
            "I hurt my {t} at work.",
        ],
        "lab": [
            "They said my {t} was a bit off.",
            "When will I get the {t} results?",
            "Last time my {t} was fine.",
        ],
    },
}


VAL_TEMPLATES: dict[str, dict[str, list[str]]] = {
    "dictation": {
        "drug": ["Increase the {t} to twice daily."],
        "condition": ["Working diagnosis is {t}."],
        "procedure": ["A {t} is indicated at this stage."],
        "anatomy": ["Bruising is seen across the {t}."],
        "lab": ["The {t} is slightly low today."],
    },
    "handoff": {
        "drug": ["The night team started {t} for her."],
        "condition": ["Room six is being treated for {t}."],
        "procedure": ["He is nil by mouth for the {t}."],
        "anatomy": ["She keeps rubbing her {t}."],
        "lab": ["We are still waiting on the {t}."],
    },
    "chart_note": {
        "drug": ["Home medication: {t}."],
        "condition": ["Known history of {t}."],
        "procedure": ["Completed {t} without incident."],
        "anatomy": ["Scar over the {t} is well healed."],
        "lab": ["Latest {t} attached."],
    },
    "history": {
        "drug": ["The pharmacist said {t} was safe for me."],
        "condition": ["My brother has {t} as well."],
        "procedure": ["Nobody explained the {t} to me."],
        "anatomy": ["My {t} aches when it rains."],
        "lab": ["Was my {t} normal this time?"],
    },
}

TEST_TEMPLATES: dict[str, dict[str, list[str]]] = {
    "dictation": {
        "drug": ["Prescribed {t} for the next ten days.", "We will taper the {t} over a month."],
        "condition": ["Differential includes {t}.", "Presentation is typical of {t}."],
        "procedure": ["Arrange an urgent {t}.", "The {t} was postponed until Friday."],
        "anatomy": ["Reduced movement of the {t} on examination.", "No deformity of the {t}."],
        "lab": ["Send a {t} with the next bloods.", "The {t} has improved since admission."],
    },
    "handoff": {
        "drug": ["Her {t} was given late tonight.", "Do not restart the {t} without the registrar."],
        "condition": ["The new patient in bay two has {t}.", "He was transferred with suspected {t}."],
        "procedure": ["The {t} went ahead this afternoon.", "They cancelled his {t} again."],
        "anatomy": ["There is a drain near the {t}.", "Check the {t} every hour."],
        "lab": ["The lab rang about the {t}.", "Her {t} needs repeating at ten."],
    },
    "chart_note": {
        "drug": ["Currently on {t}.", "Intolerant of {t}."],
        "condition": ["Admitted for {t}.", "Longstanding {t}, well controlled."],
        "procedure": ["Awaiting {t}.", "Previous {t} in another hospital."],
        "anatomy": ["Swelling of the {t} resolved.", "Pain localised to the {t}."],
        "lab": ["Pending: {t}.", "Raised {t} noted on review."],
    },
    "history": {
        "drug": ["I ran out of my {t} on Sunday.", "Can I take {t} with my other tablets?"],
        "condition": ["Nobody in my family has had {t}.", "I think I might have {t}."],
        "procedure": ["I was scared before the {t}.", "How long does a {t} take?"],
        "anatomy": ["There is a lump near my {t}.", "My {t} feels stiff in the morning."],
        "lab": ["The nurse took blood for a {t}.", "My {t} was high last year."],
    },
}


def pool(templates: dict[str, dict[str, list[str]]], category: str) -> list[tuple[str, str]]:
    """(context type, template) pairs of one pool for one entity category."""
    return [(c, tpl) for c in CONTEXT_TYPES for tpl in templates[c][category]]


def render(template: str, term: str) -> str:
    text = template.format(t=term)
    return text[0].upper() + text[1:]
