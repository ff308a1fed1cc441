"""Sentence templates per context type and entity category. `{t}` is the term; numbers are spelled out as spoken."""

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


def render(template: str, term: str) -> str:
    text = template.format(t=term)
    return text[0].upper() + text[1:]
