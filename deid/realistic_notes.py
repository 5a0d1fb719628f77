"""A realistic evaluation set of clinical notes, written apart from the training generator.

Why: the synthetic corpus (:mod:`fedmed.deid.corpus`, templates in
:mod:`fedmed.deid.templates`) has few capitalised non-PHI words, so a tagger trained on it
learns "capitalised unknown word => name" and scores well on its own test split while it
flags drug names, lab abbreviations, exam phrases and list numbers on real notes (issue 15:
precision 0.35 on human-written notes). This module renders notes in the style of real
discharge summaries, progress notes, radiology and ECG reports -- medication lists with
brand and generic drug names in any case and with doses, problem lists, lab tables full of
abbreviations, vitals, numbered lists, "/" separators, eponyms -- and records two kinds of
gold for each note:

- the PHI spans (i2b2-2014 subtypes), written as i2b2 XML so ``fedmed deid eval --gold``
  reads them as any other gold folder;
- the *clinical terms* (drug names, diagnoses, lab names, exam findings) that must survive
  scrubbing intact, in ``clinical_terms.json`` beside the XML files; ``fedmed deid eval``
  reports the share retained (:func:`fedmed.deid.evaluate.retention`).

Separation from training (checked by ``tests/test_deid_realistic.py``): the templates, the
clinical vocabulary and the renderer here are written for this set only; nothing in the
training generator imports this module, and no template line is shared. PHI *values* come
from :class:`fedmed.deid.fakes.FakePHI` (the same Faker name lists as the synthetic corpus),
so name recall here is still optimistic for real notes; the contexts and the non-PHI text
around them are what is new.

Mini-language of the templates below (deliberately unlike the training one):

- ``{TYPE}`` / ``{TYPE:role}``: PHI; TYPE an i2b2 subtype or ``MRN``; PATIENT and DOCTOR
  roles pick a person and a style (``{PATIENT:caps}``, ``{DOCTOR:b.dr}``); DATE roles pick
  an event (``{DATE:admit}``).
- ``{@NAME}``: a generated block (medications, problems, labs, vitals, exam, plan).
- ``[[text]]``: a clinical term (gold non-PHI that must be retained).
- ``<<a|b|c>>``: one alternative at random (no nesting).

Determinism: note ``i`` depends only on ``(seed, i)``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from fedmed.deid.fakes import FakePHI
from fedmed.deid.io import write_i2b2
from fedmed.deid.phi import Document, Span

TERMS_FILE = "clinical_terms.json"
"""Gold clinical terms of a realistic folder: ``{doc_id: [[start, end, text], ...]}``."""

# ---------------------------------------------------------------- clinical vocabulary
# Written for this evaluation set; the training generator draws its vocabulary elsewhere.

DRUGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Prednisone", ("20 mg po qd", "40mg daily x 5 days", "10 mg PO qAM")),
    ("Alprazolam", ("0.25 mg po tid prn anxiety", "0.5mg qhs prn")),
    ("ATORVASTATIN", ("40 MG PO QHS", "80 mg daily")),
    ("Hydrochlorothiazide", ("25 mg po qd", "12.5mg daily")),
    ("hctz", ("25 qd", "12.5 mg qam")),
    ("Percocet", ("5/325 1-2 tabs po q4-6h prn pain", "1 tab q6h prn")),
    ("Acetylsalicylic Acid", ("81 mg daily", "325 mg po qd")),
    ("SILDENAFIL", ("20 MG TID", "50 mg prn")),
    ("Lisinopril", ("10 mg po daily", "20mg qd", "40 mg QD")),
    ("Metoprolol tartrate", ("25 mg po bid", "12.5 mg BID")),
    ("Toprol XL", ("50 mg qd", "100mg daily")),
    ("Lasix", ("40 mg po qd", "20 mg IV bid", "80mg bid")),
    ("Furosemide", ("40 mg daily",)),
    ("Coumadin", ("5 mg qhs, adjust per INR", "2.5mg M/W/F")),
    ("Plavix", ("75 mg daily", "75mg po qd")),
    ("Norvasc", ("5 mg qd", "10 mg daily")),
    ("Zocor", ("20 mg qhs", "40mg at bedtime")),
    ("Lipitor", ("10 mg qd",)),
    ("Xanax", ("0.25 mg prn",)),
    ("Ativan", ("0.5-1 mg IV q4h prn agitation", "1mg qhs prn")),
    ("Tylenol", ("650 mg po q6h prn", "1 g q8h prn fever")),
    ("Colace", ("100 mg bid",)),
    ("Senna", ("2 tabs qhs",)),
    ("Protonix", ("40 mg qd", "40mg IV daily")),
    ("Nexium", ("40 mg daily",)),
    ("Lantus", ("22 units sc qhs", "18 units at bedtime")),
    ("Humalog", ("sliding scale ac/hs",)),
    ("NovoLog", ("4 units with meals",)),
    ("Metformin", ("500 mg po bid", "1000mg BID")),
    ("Glipizide", ("5 mg qam",)),
    ("Neurontin", ("300 mg tid", "600 mg qhs")),
    ("Flomax", ("0.4 mg qhs",)),
    ("Synthroid", ("88 mcg qd", "0.1 mg daily")),
    ("Levothyroxine", ("75 mcg po daily",)),
    ("Zoloft", ("50 mg qd",)),
    ("Celexa", ("20 mg daily",)),
    ("Ambien", ("5 mg qhs prn sleep",)),
    ("Keflex", ("500 mg po qid x 7 days",)),
    ("Bactrim DS", ("1 tab po bid",)),
    ("Cipro", ("500 mg bid",)),
    ("Levaquin", ("750 mg po qd",)),
    ("Vancomycin", ("1 g IV q12h", "1250 mg IV q24h")),
    ("Zosyn", ("3.375 g IV q6h",)),
    ("Ceftriaxone", ("1 gm IV qd",)),
    ("Heparin", ("5000 units sc tid",)),
    ("Lovenox", ("40 mg sc qd", "1 mg/kg sc q12h")),
    ("Eliquis", ("5 mg bid", "2.5mg BID")),
    ("Xarelto", ("20 mg with supper",)),
    ("Imdur", ("30 mg qd",)),
    ("Nitroglycerin", ("0.4 mg SL q5min prn chest pain",)),
    ("NTG", ("0.4 SL prn",)),
    ("Digoxin", ("0.125 mg qd",)),
    ("Amiodarone", ("200 mg daily",)),
    ("Diltiazem", ("120 mg CD qd", "30mg qid")),
    ("Carvedilol", ("6.25 mg bid", "12.5 mg BID")),
    ("Coreg", ("3.125 mg bid",)),
    ("Spironolactone", ("25 mg daily",)),
    ("Aldactone", ("25 mg qd",)),
    ("Losartan", ("50 mg qd",)),
    ("Cozaar", ("100 mg daily",)),
    ("Albuterol", ("2 puffs q4h prn", "nebs q4h prn wheeze")),
    ("Advair", ("250/50 1 puff bid",)),
    ("Spiriva", ("18 mcg inh qd",)),
    ("Singulair", ("10 mg qhs",)),
    ("Allopurinol", ("100 mg daily", "300mg qd")),
    ("Colchicine", ("0.6 mg bid",)),
    ("Omeprazole", ("20 mg qd",)),
    ("Pepcid", ("20 mg bid",)),
    ("Zofran", ("4 mg IV q6h prn nausea",)),
    ("Oxycodone", ("5 mg po q4h prn", "10mg q6h prn")),
    ("Dilaudid", ("0.5 mg IV q3h prn",)),
    ("Morphine", ("2 mg IV q2h prn",)),
    ("Tramadol", ("50 mg q6h prn",)),
    ("KCl", ("20 mEq po x1", "40 meq daily")),
    ("K-Dur", ("20 mEq qd",)),
    ("MVI", ("1 tab daily",)),
    ("Folic acid", ("1 mg qd",)),
    ("Ferrous sulfate", ("325 mg tid",)),
    ("Vitamin D", ("1000 units daily",)),
    ("Calcium carbonate", ("500 mg bid",)),
    ("Aricept", ("10 mg qhs",)),
    ("Namenda", ("10 mg bid",)),
    ("Seroquel", ("25 mg qhs prn",)),
    ("Haldol", ("1 mg IM x1",)),
    ("Trazodone", ("50 mg qhs",)),
    ("Prilosec", ("20 mg daily",)),
    ("Ecotrin", ("325 mg qd",)),
    ("ASA", ("81 mg qd", "325")),
    ("Proscar", ("5 mg qd",)),
    ("Cardizem", ("240 mg qd",)),
    ("Hytrin", ("2 mg qhs",)),
    ("Glyburide", ("5 mg bid",)),
    ("Avandia", ("4 mg qd",)),
    ("Zestril", ("20 mg qd",)),
    ("Tenormin", ("50 mg daily",)),
    ("Atenolol", ("25 mg qd",)),
)
"""Drug name as written in notes (any case) and dose/frequency strings seen with it."""

PROBLEMS: tuple[str, ...] = (
    "Hypertension", "HTN", "Type 2 diabetes mellitus", "DM2", "NIDDM", "IDDM",
    "Hyperlipidemia", "Hypercholesterolemia", "CAD s/p CABG", "CAD", "COPD",
    "Atrial fibrillation", "Paroxysmal AFib", "CHF", "Congestive heart failure",
    "Chronic kidney disease stage III", "CKD", "GERD", "Osteoarthritis", "DJD",
    "Hypothyroidism", "Depression", "Anxiety", "Obstructive sleep apnea", "OSA", "Gout",
    "BPH", "Anemia", "Iron deficiency anemia", "Peripheral vascular disease", "PVD",
    "Sinus arrythmia", "Hx angina", "Unstable angina", "Morbid obesity", "Obesity",
    "Diverticulosis", "Prostate cancer", "Breast cancer", "Migraine", "Asthma",
    "Osteoporosis", "Hyperkalemia", "Hyponatremia", "Cellulitis", "Pneumonia", "UTI",
    "Urosepsis", "DVT", "Pulmonary embolism", "Stroke", "TIA", "CVA", "Dementia",
    "Hashimoto's thyroiditis", "Crohn's disease", "Parkinson's disease",
    "Alzheimer's dementia", "Bell's palsy", "Graves' disease", "Barrett's esophagus",
    "Raynaud's", "Cirrhosis", "Hepatitis C", "Pancreatitis", "Cholecystitis",
    "Nephrolithiasis", "Syncope", "Hypoglycemia", "Left bundle branch block", "LBBB",
    "Aortic stenosis", "Mitral regurgitation", "Cardiomyopathy", "Hypertensive urgency",
    "Chronic low back pain", "Lumbar stenosis", "Rheumatoid arthritis", "Psoriasis",
    "Glaucoma", "Cataracts", "Macular degeneration", "Tobacco abuse", "ETOH abuse",
)
"""Problems and diagnoses as written in problem lists."""

LABS: tuple[tuple[str, str], ...] = (
    ("Na", "{:d}", ), ("K", "{:.1f}"), ("Cl", "{:d}"), ("CO2", "{:d}"), ("BUN", "{:d}"),
    ("Cr", "{:.1f}"), ("Glu", "{:d}"), ("Ca", "{:.1f}"), ("Mg", "{:.1f}"), ("Phos", "{:.1f}"),
    ("WBC", "{:.1f}"), ("Hgb", "{:.1f}"), ("Hct", "{:.1f}"), ("Plt", "{:d}"), ("MCV", "{:d}"),
    ("INR", "{:.1f}"), ("PTT", "{:.1f}"), ("AST", "{:d}"), ("ALT", "{:d}"),
    ("Alk Phos", "{:d}"), ("T bili", "{:.1f}"), ("Alb", "{:.1f}"), ("TSH", "{:.2f}"),
    ("B12", "{:d}"), ("Ferritin", "{:d}"), ("HbA1c", "{:.1f}"), ("LDL", "{:d}"),
    ("HDL", "{:d}"), ("TG", "{:d}"), ("BNP", "{:d}"), ("Trop I", "{:.2f}"), ("CK", "{:d}"),
    ("CK-MB", "{:.1f}"), ("Lipase", "{:d}"), ("ESR", "{:d}"), ("CRP", "{:.1f}"),
    ("PSA", "{:.1f}"), ("Lactate", "{:.1f}"),
)
"""Lab abbreviations and how their values print."""

LAB_RANGES: dict[str, tuple[float, float]] = {
    "Na": (128, 146), "K": (3.1, 5.8), "Cl": (95, 110), "CO2": (18, 32), "BUN": (6, 60),
    "Cr": (0.6, 3.4), "Glu": (68, 340), "Ca": (8.0, 10.6), "Mg": (1.4, 2.6), "Phos": (2.2, 5.1),
    "WBC": (3.2, 19.5), "Hgb": (7.2, 16.1), "Hct": (22.0, 48.0), "Plt": (88, 460),
    "MCV": (72, 104), "INR": (0.9, 3.8), "PTT": (24.0, 80.0), "AST": (12, 140),
    "ALT": (9, 150), "Alk Phos": (40, 260), "T bili": (0.2, 3.1), "Alb": (2.1, 4.8),
    "TSH": (0.2, 9.8), "B12": (150, 1100), "Ferritin": (8, 900), "HbA1c": (5.1, 11.8),
    "LDL": (48, 210), "HDL": (22, 88), "TG": (60, 480), "BNP": (15, 2400),
    "Trop I": (0.01, 4.5), "CK": (30, 900), "CK-MB": (0.5, 28.0), "Lipase": (10, 600),
    "ESR": (2, 110), "CRP": (0.2, 24.0), "PSA": (0.3, 14.0), "Lactate": (0.6, 6.2),
}

EXAM: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("General", ("[[Obese gentleman lying comfortably]] in bed, [[NAD]]",
                 "Alert, [[well-appearing]], in no acute distress",
                 "Elderly woman sitting up in chair, [[A&O x3]]")),
    ("HEENT", ("[[Pupils equal]], round and reactive to light; [[EOMI]]",
               "[[PERRLA]], [[anicteric sclerae]], [[MMM]]",
               "[[Oropharynx clear]], no thrush")),
    ("Neck", ("Supple, [[JVP]] 8 cm, no [[bruits]]", "No [[lymphadenopathy]], no [[JVD]]")),
    ("Chest", ("[[Clear to auscultation]] bilaterally", "Scattered [[wheezes]], no [[rales]]",
               "[[Crackles]] at both bases, decreased breath sounds on the right")),
    ("CVS", ("[[RRR]], S1 S2 normal, [[II/VI systolic murmur]] at the apex",
             "Irregularly irregular, no [[rubs]] or [[gallops]]",
             "[[Regular rate and rhythm]], no [[murmurs]]")),
    ("Abd", ("Soft, [[non-tender]], [[non-distended]], [[normoactive bowel sounds]]",
             "[[Obese]], soft, mild [[RUQ tenderness]], no [[rebound]]")),
    ("Ext", ("[[Positive pedal pulses]], trace [[pedal edema]]",
             "No [[clubbing]], [[cyanosis]] or [[edema]]; [[2+ DP pulses]] bilat",
             "[[1+ pitting edema]] to mid-shin")),
    ("Neuro", ("[[CN II-XII intact]], [[strength 5/5]] throughout",
               "[[Alert]], oriented, [[nonfocal]]", "[[Babinski]] downgoing, gait not tested")),
    ("Skin", ("Warm and dry, no [[rash]]", "Stage II [[sacral decubitus]], clean")),
)

PROSE: tuple[str, ...] = (
    "Alert and conversant on arrival, complaining of [[substernal chest pressure]] radiating "
    "to the left arm.",
    "New [[troponin leak]] to 0.42, treated as [[NSTEMI]] with [[Heparin]] gtt and [[ASA]].",
    "Case was reviewed at the morning conference; [[cath]] deferred given [[CKD]].",
    "Under [[Bactrim]] the [[erythema]] receded and the [[WBC]] normalized.",
    "[[Hydrochlorothiazide]] was stopped for [[hyponatremia]] (Na 126) and [[Amlodipine]] "
    "started.",
    "She wanted to go home before the weekend and was felt to be safe.",
    "[[Foley]] removed on day 2, voiding without difficulty.",
    "[[Lower extremity dopplers]] negative for [[DVT]].",
    "Seen by [[PT]], who recommends a [[rolling walker]] and home PT.",
    "[[TTE]]: [[EF]] 55%, mild [[LVH]], no [[wall motion abnormalities]].",
    "Tolerating a [[cardiac diet]]; [[BM]] x2 today.",
    "[[Metoprolol]] uptitrated for rate control, HR now 70s-80s.",
    "[[Blood cultures]] 2/2 positive for [[MSSA]]; [[ID]] consulted, [[Nafcillin]] started.",
    "[[Hgb]] stable at 9.8 after 1 unit [[PRBC]].",
    "[[Chest x-ray]] with [[bibasilar atelectasis]], no [[infiltrate]].",
    "[[Insulin]] requirements fell once [[steroids]] were tapered.",
    "Denies [[fevers]], [[chills]], [[night sweats]]; appetite fair.",
    "[[Percocet]] for pain with good effect, no [[sedation]].",
    "Patient educated on [[low-salt diet]] and [[daily weights]].",
    "[[Sinus tachycardia]] resolved with [[IV fluids]].",
    "[[Creatinine]] peaked at 2.1 and returned to baseline 1.3.",
    "[[Pain]] 3/10, well controlled on current regimen.",
    "Social: lives alone, 40 pack-year [[smoking history]], quit 10 years ago, no [[ETOH]].",
    "Family history of [[CAD]] in father, [[breast cancer]] in mother.",
)
"""Free-text sentences of the kind that fill a real course or history section."""

CASE_STYLES = ("as-is", "as-is", "upper", "lower", "title")


def _case(text: str, style: str) -> str:
    if style == "upper":
        return text.upper()
    if style == "lower":
        return text.lower()
    if style == "title":
        return text.title()
    return text


# ---------------------------------------------------------------- templates

@dataclass(frozen=True)
class RealisticTemplate:
    """One note layout of the realistic set."""

    kind: str
    name: str
    body: str


TEMPLATES: tuple[RealisticTemplate, ...] = (
    RealisticTemplate("discharge", "rds-mgh-style", """\
Record #{IDNUM}
{HOSPITAL}
{MRN} | {ACCOUNT} | {DATE:admit} 12:00:00 AM
DISCHARGE SUMMARY
Unsigned | DIS | Admission Date: {DATE:admit}
Report Status: Unsigned
Discharge Date: {DATE:discharge}
ATTENDING: {DOCTOR:a.caps} M.D.
PRINCIPAL DIAGNOSIS: [[<<Unstable angina|Congestive heart failure|Urosepsis|\
Community acquired pneumonia>>]]
OTHER DIAGNOSIS: {@PROBLEMS_INLINE}
HISTORY OF PRESENT ILLNESS: {PATIENT:title} is a {AGE} year old <<gentleman|woman|\
man>> with a history of {@PROBLEMS_INLINE} who presented with <<2 days of|a week of|\
worsening>> [[dyspnea on exertion]] and [[orthopnea]]. Here <<she|he>> was found to have \
a [[BNP]] of 1,240. <<She|He>> develops [[chest pressure]] after climbing 1 flight, \
i.e. < 4 [[METS]]. {@PROSE}
ALLERGIES: <<[[NKDA]]|[[Penicillin]] (rash)|[[Sulfa]] - hives|[[NKDA]] / no latex>>
MEDICATIONS ON ADMISSION:
{@MEDS_NUMBERED}
PHYSICAL EXAM:
{@EXAM}
LABS ON ADMISSION:
{@LABS_TABLE}
HOSPITAL COURSE:
1. [[<<CHF|Heart failure|Volume overload>>]]: diuresed with [[Lasix]] 40 IV bid, \
net negative 3 L. [[Echo]] {DATE} showed [[EF]] 35-40%. {@PROSE}
2. [[<<Hypertension|HTN>>]]: [[Lisinopril]] increased to 20 mg.
3. [[<<Diabetes|DM2|NIDDM>>]]: [[Metformin]] held, covered with [[Humalog]] sliding scale.
4. Code status: Full code, discussed with <<daughter|son|wife|husband>> {PATIENT:relative}.
DISCHARGE MEDICATIONS:
{@MEDS_NUMBERED}
DISPOSITION: Home with services. Under the care of {DOCTOR:b.full} (PCP), follow up in \
2 weeks; {HOSPITAL:b} cardiology clinic {PHONE}.
Dictated By: {DOCTOR:a.lastfirst}
Attending: {DOCTOR:a.full}
{DOCTOR:a.initials}/{USERNAME}
Batch: {IDNUM:b} Index No. {IDNUM:c} D: {DATE:discharge} T: {DATE:discharge}
"""),
    RealisticTemplate("discharge", "rds-short-transfer", """\
{HOSPITAL}
TRANSFER / DISCHARGE NOTE
Name: {PATIENT:caps}    Unit #: {MRN}
DOB: {DATE:dob}    Age: {AGE}    Sex: <<M|F>>
Date of admission: {DATE:admit}
Date of transfer: {DATE:discharge}
Transferred to: {HOSPITAL:b}, {CITY}, {STATE}
Reason for admission: [[<<Cellulitis|Pneumonia|Syncope|GI bleed>>]]
Problem list:
{@PROBLEMS_LIST}
Meds / doses at transfer:
{@MEDS_SLASHED}
Vitals: {@VITALS}
Labs: {@LABS_INLINE}
Case discussed with {DOCTOR:b.dr} at the receiving facility, who accepted. \
Pt wanted to go closer to home in {CITY}. New [[O2 requirement]] of 2 L NC. {@PROSE}
Contact: {PATIENT:relative} ({PHONE:b})
{DOCTOR:a.full}, MD  pager {PHONE:c}
"""),
    RealisticTemplate("progress", "rpn-soap", """\
{DATE} {@TIME}
PROGRESS NOTE - <<MEDICINE|CARDIOLOGY|GERIATRICS>>
Patient: {PATIENT:lastfirst}  MRN {MRN}  Rm {ROOM}
S: {PATIENT:first} reports <<feeling better|less short of breath|ongoing pain in \
the left knee>>. Slept poorly. No [[chest pain]], no [[palpitations]]. Tolerating diet.
{@PROSE}
O: {@VITALS}
{@EXAM}
{@LABS_INLINE}
A/P: {AGE} yo <<M|F>> w/ {@PROBLEMS_INLINE} here for [[<<COPD exacerbation|\
CHF exacerbation|AKI|hypokalemia>>]].
{@PLAN_NUMBERED}
Alert: pt on [[Coumadin]] - check [[INR]] daily.
{DOCTOR:a.initials} / {DOCTOR:a.full}, <<MD|PA-C|NP>>
"""),
    RealisticTemplate("progress", "rpn-clinic-visit", """\
{HOSPITAL} - {DEPARTMENT}
Outpatient follow up visit {DATE}
{PATIENT:full} is a {AGE} year old {PROFESSION} seen for follow up of \
{@PROBLEMS_INLINE}. Last seen by {DOCTOR:b.dr} on {DATE:prior}.
Interval history: Doing well. <<Retired|Still working>>, walks 1 mile daily. \
Denies [[claudication]]. Occasional [[heartburn]] relieved by [[Tums]]. {@PROSE}
Current medications:
{@MEDS_DASHED}
Allergies: [[NKDA]]
ROS: negative x 10 systems except as above.
PE: {@VITALS}
{@EXAM}
Data: {@LABS_INLINE}. [[FLP]] {DATE:prior}: [[LDL]] 132.
Impression / plan:
{@PLAN_NUMBERED}
RTC 3 months. Labs: [[TSH]], [[B12]], [[FLP]], [[CMP]] before next visit.
cc: {DOCTOR:c.full}, {HOSPITAL:b}
Electronically signed by {DOCTOR:a.full} {DATE} {@TIME}
"""),
    RealisticTemplate("radiology", "rrad-cxr", """\
EXAM: <<CHEST PA AND LATERAL|PORTABLE CHEST, 1 VIEW|CHEST 2 VIEWS>>
DATE OF SERVICE: {DATE}   ACCESSION: {IDNUM}
PATIENT: {PATIENT:caps}   MRN: {MRN}   DOB: {DATE:dob}
ORDERING: {DOCTOR:b.caps}
INDICATION: {AGE} year old with [[<<cough|fever|dyspnea|chest pain>>]]. \
R/O [[pneumonia]].
COMPARISON: {DATE:prior}
FINDINGS: The [[cardiomediastinal silhouette]] is <<within normal limits|\
mildly enlarged>>. There is <<no focal consolidation|a left lower lobe opacity>>. \
No [[pleural effusion]] or [[pneumothorax]]. [[Degenerative changes]] of the thoracic \
spine. [[Sternotomy wires]] intact.
IMPRESSION:
1. <<[[No acute cardiopulmonary process]]|[[Left lower lobe pneumonia]]|\
[[Mild pulmonary edema]]>>.
2. [[Cardiomegaly]], stable.
Dictated by: {DOCTOR:a.full}, M.D.  Transcribed: {USERNAME}  {DATE} {@TIME}
"""),
    RealisticTemplate("radiology", "rrad-ct-head", """\
{HOSPITAL} DEPARTMENT OF RADIOLOGY
CT HEAD WITHOUT CONTRAST
Name: {PATIENT:lastfirst}  Med Rec #: {MRN}  Exam date: {DATE}
Clinical history: [[<<Fall|Syncope|Altered mental status|Headache>>]], on [[Eliquis]].
Technique: Axial images from skull base to vertex, no IV contrast.
Findings: No [[intracranial hemorrhage]], [[mass effect]] or [[midline shift]]. \
[[Periventricular white matter hypodensities]] consistent with [[chronic small vessel \
ischemic disease]]. Ventricles and sulci are <<age appropriate|prominent>>. The \
[[mastoid air cells]] are clear.
Impression: No acute intracranial abnormality. Preliminary read called to \
{DOCTOR:b.dr} at {@TIME} on {DATE}.
Radiologist: {DOCTOR:a.full}, MD  /  {DOCTOR:a.initials}
"""),
    RealisticTemplate("ecg", "recg-standard", """\
ECG REPORT    {HOSPITAL}
Pt: {PATIENT:caps}   ID: {MRN}   Age: {AGE}   Sex: <<Male|Female>>
Acquired: {DATE} {@TIME}   Room {ROOM}
Vent rate {@RATE} BPM  PR int {@PR} ms  QRS dur {@QRS} ms  QT/QTc {@QT} ms  \
P-R-T axes {@AXES}
<<[[Sinus rhythm]]|[[Sinus bradycardia]]|[[Sinus arrythmia]]|[[Atrial fibrillation]], \
ventricular rate 80s>>
<<[[Left axis deviation]]|[[Left ventricular hypertrophy]]|[[Nonspecific ST-T wave \
changes]]|[[Incomplete right bundle branch block]]>>
<<Abnormal ECG|Borderline ECG|Otherwise normal ECG>>
When compared with ECG of {DATE:prior}, <<no significant change|[[T wave inversion]] \
now present in V4-V6>>.
Confirmed by {DOCTOR:a.lastfirst} ({IDNUM}) on {DATE}
"""),
    RealisticTemplate("ecg", "recg-stress", """\
EXERCISE STRESS TEST
{PATIENT:full}   {MRN}   {DATE}
Referring MD: {DOCTOR:b.dr}
Indication: [[Hx angina]], [[<<CAD|Hyperlipidemia|Abnormal ECG>>]].
Protocol: [[Bruce]]. Exercised 7:30 min, achieved 9.2 [[METS]] and 88% of [[MPHR]]. \
Resting BP 142/70, peak 178/80.
Baseline ECG: [[Sinus rhythm]], [[LBBB]]. Stress: no [[ischemic ST changes]]; rare [[PVCs]].
Medications: [[Toprol XL]] held 24 h; [[ATORVASTATIN]], [[ASA]].
Conclusion: <<Negative for ischemia at an adequate workload|Non-diagnostic study>>.
{DOCTOR:a.full}, Cardiology, {HOSPITAL}  {PHONE}
"""),
)
"""The realistic note layouts: two per kind of discharge, progress, radiology and ECG."""


# ---------------------------------------------------------------- rendering

Piece = tuple[str, str | None, bool]
"""A run of note text, its PHI subtype (None for non-PHI) and whether it is a clinical term."""

_TOKEN_RE = re.compile(r"\{@([A-Z_]+)\}|\{([A-Z][A-Z\-]*)(?::([a-z.]+))?\}|\[\[(.+?)\]\]",
                       re.DOTALL)
_ALT_RE = re.compile(r"<<(.*?)>>", re.DOTALL)


@dataclass
class _Person:
    first: str
    last: str
    middle: str
    sex: str


@dataclass
class _Note:
    """State of one note being rendered (its PHI, drawn once, repeats where reused)."""

    rng: random.Random
    fp: FakePHI
    people: dict[str, _Person] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)
    dates: dict[str, dt.date] = field(default_factory=dict)
    date_format: str = ""
    age: int = 60


DATE_FORMATS = ("{m}/{d}/{Y}", "{m}/{d}/{y}", "{mm}/{dd}/{Y}", "{Y}-{mm}-{dd}",
                "{Month} {d}, {Y}", "{dd}-{Mon}-{Y}", "{mm}/{dd}/{y}")


def _render_date(day: dt.date, fmt: str) -> str:
    return fmt.format(m=day.month, d=day.day, Y=day.year, y=f"{day.year % 100:02d}",
                      mm=f"{day.month:02d}", dd=f"{day.day:02d}",
                      Month=day.strftime("%B"), Mon=day.strftime("%b"))


class RealisticRenderer:
    """Renders a :class:`RealisticTemplate` into a Document and its clinical terms."""

    def __init__(self, rng: random.Random) -> None:
        self.note = _Note(rng, FakePHI(rng))
        n = self.note
        n.age = rng.randint(90, 99) if rng.random() < 0.1 else rng.randint(24, 89)
        admit = dt.date(2003, 1, 1) + dt.timedelta(days=rng.randint(0, 365 * 21))
        n.dates = {"admit": admit, "discharge": admit + dt.timedelta(days=rng.randint(2, 11)),
                   "dob": admit - dt.timedelta(days=n.age * 365 + rng.randint(0, 360)),
                   "prior": admit - dt.timedelta(days=rng.randint(40, 2000)),
                   "": admit + dt.timedelta(days=rng.randint(0, 6))}
        n.date_format = rng.choice(DATE_FORMATS)

    @property
    def rng(self) -> random.Random:
        return self.note.rng

    # ----------------------------------------------------------- PHI
    def _person(self, key: str) -> _Person:
        if key not in self.note.people:
            sex = self.rng.choice("FM")
            fp = self.note.fp
            middle = fp.first_name(sex) if self.rng.random() < 0.3 else ""
            last = fp.last_name()
            if key == "relative" and "patient" in self.note.people and self.rng.random() < 0.5:
                last = self.note.people["patient"].last
            self.note.people[key] = _Person(fp.first_name(sex), last, middle, sex)
        return self.note.people[key]

    def _name(self, p: _Person, style: str, typ: str) -> list[Piece]:
        mi = f" {p.middle[0]}." if p.middle else ""
        if style == "title":
            title = "Mr." if p.sex == "M" else self.rng.choice(("Ms.", "Mrs."))
            return [(title + " ", None, False), (p.last, typ, False)]
        if style == "dr":
            return [("Dr. ", None, False), (p.last, typ, False)]
        text = {"full": f"{p.first}{mi} {p.last}", "first": p.first, "last": p.last,
                "caps": f"{p.last}, {p.first}{mi}".upper(),
                "lastfirst": f"{p.last}, {p.first}",
                "initials": (p.first[0] + (p.middle[:1]) + p.last[0]).upper()}[style]
        return [(text, typ, False)]

    def phi(self, typ: str, role: str) -> list[Piece]:
        if typ == "MRN":
            typ = "MEDICALRECORD"
        if typ == "PATIENT":
            if role == "relative":
                return self._name(self._person("relative"), "full", "PATIENT")
            return self._name(self._person("patient"), role or "full", "PATIENT")
        if typ == "DOCTOR":
            who, _, style = (role or "a.full").partition(".")
            return self._name(self._person("doctor-" + who), style or "full", "DOCTOR")
        if typ == "AGE":
            return [(str(self.note.age), "AGE", False)]
        if typ == "DATE":
            day = self.note.dates.get(role, self.note.dates[""])
            fmt = self.note.date_format if self.rng.random() < 0.7 else \
                self.rng.choice(DATE_FORMATS)
            return [(_render_date(day, fmt), "DATE", False)]
        key = f"{typ}:{role}"
        if key not in self.note.values:
            self.note.values[key] = self._new_value(typ)
        return [(self.note.values[key], typ, False)]

    def _new_value(self, typ: str) -> str:
        fp = self.note.fp
        patient = self._person("patient")
        makers = {
            "HOSPITAL": fp.hospital, "CITY": fp.city, "STATE": fp.state, "PHONE": fp.phone,
            "DEPARTMENT": fp.department, "PROFESSION": fp.profession, "ROOM": fp.room,
            "USERNAME": lambda: fp.username(fp.first_name(), fp.last_name()),
            "EMAIL": lambda: fp.email(patient.first, patient.last),
        }
        if typ in makers:
            return makers[typ]()
        return fp.shape(typ)

    # ----------------------------------------------------------- clinical blocks
    def _drug(self) -> list[Piece]:
        return self._drugs(1)[0]

    def _drugs(self, k: int) -> list[list[Piece]]:
        picked = self.rng.sample(range(len(DRUGS)), k)
        out = []
        for i in picked:
            name, doses = DRUGS[i]
            style = self.rng.choice(CASE_STYLES)
            out.append([(_case(name, style), None, True),
                        (" " + self.rng.choice(doses), None, False)])
        return out

    def block(self, name: str) -> list[Piece]:
        rng = self.rng
        if name.startswith("MEDS"):
            items = self._drugs(rng.randint(3, 9))
            sep = {"MEDS_NUMBERED": "numbered", "MEDS_DASHED": "dashed",
                   "MEDS_SLASHED": "slashed"}[name]
            return _list_pieces(items, sep)
        if name == "PROBLEMS_LIST":
            items = [[(p, None, True)] for p in rng.sample(PROBLEMS, rng.randint(3, 7))]
            return _list_pieces(items, rng.choice(("numbered", "dashed")))
        if name == "PROBLEMS_INLINE":
            probs = rng.sample(PROBLEMS, rng.randint(1, 4))
            out: list[Piece] = []
            for i, p in enumerate(probs):
                if i:
                    out.append((rng.choice((", ", "/", " / ", "; ")), None, False))
                out.append((p, None, True))
            return out
        if name == "LABS_TABLE":
            return self._labs(table=True)
        if name == "LABS_INLINE":
            return self._labs(table=False)
        if name == "VITALS":
            return [(f"T {rng.choice(('97.6', '98.2', '99.0', '100.9', '101.4'))} "
                     f"P {rng.randint(48, 124)} BP {rng.randint(92, 182)}/{rng.randint(48, 104)}"
                     f" RR {rng.randint(12, 28)} O2 sat {rng.randint(86, 100)}% "
                     f"{rng.choice(('RA', 'on 2L', '4L NC', 'room air'))}  "
                     f"Wt {rng.randint(48, 140)} kg", None, False)]
        if name == "EXAM":
            out = []
            for head, options in EXAM:
                if rng.random() < 0.25:
                    continue
                out.append((f"{_case(head, rng.choice(('as-is', 'upper')))}: ", None, False))
                out.extend(_parse_terms(rng.choice(options)))
                out.append(("\n", None, False))
            return out[:-1] if out else out
        if name == "PLAN_NUMBERED":
            plans = [
                [("Continue ", None, False), *self._drug()],
                [("Increase ", None, False), *self._drug()],
                [("D/C ", None, False), *self._drug()],
                [("Check ", None, False), (rng.choice(("BMP", "CBC", "TSH", "B12", "FLP",
                                                       "LFTs", "A1c")), None, True),
                 (" in AM", None, False)],
                [("Monitor ", None, False), ("I/O", None, True), (", daily weights", None, False)],
                [(rng.choice(("PT/OT", "Cardiology", "GI", "Renal")), None, True),
                 (" consult", None, False)],
                [("DVT ppx with ", None, False), *self._drug()],
            ]
            chosen = rng.sample(plans, rng.randint(2, 5))
            return _list_pieces(chosen, "numbered")
        if name == "PROSE":
            out = []
            for i, sentence in enumerate(rng.sample(PROSE, rng.randint(3, 7))):
                if i:
                    out.append((" ", None, False))
                out += _parse_terms(sentence)
            return out
        if name == "TIME":
            return [(f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}", None, False)]
        if name == "RATE":
            return [(str(rng.randint(46, 128)), None, False)]
        if name == "PR":
            return [(str(rng.randint(120, 240)), None, False)]
        if name == "QRS":
            return [(str(rng.randint(70, 150)), None, False)]
        if name == "QT":
            return [(f"{rng.randint(340, 460)}/{rng.randint(390, 510)}", None, False)]
        if name == "AXES":
            return [(f"{rng.randint(-30, 80)} {rng.randint(-60, 110)} {rng.randint(-20, 90)}",
                     None, False)]
        raise ValueError(f"unknown block {{@{name}}}")

    def _labs(self, table: bool) -> list[Piece]:
        rng = self.rng
        picked = rng.sample(LABS, rng.randint(5, 12))
        cells: list[tuple[str, str]] = []
        for lab, fmt in picked:
            lo, hi = LAB_RANGES[lab]
            value = fmt.format(rng.randint(int(lo), int(hi))) if fmt == "{:d}" else \
                fmt.format(rng.uniform(lo, hi))
            cells.append((lab, value))
        out: list[Piece] = []
        if table:
            for i, (lab, value) in enumerate(cells):
                out += [(lab, None, True), (" " * max(1, 10 - len(lab)) + value, None, False)]
                out.append(("\n" if i % 3 == 2 else "    ", None, False))
            return out[:-1]
        style = rng.choice(("space", "colon", "slash"))
        for i, (lab, value) in enumerate(cells):
            if i:
                out.append((", " if style != "slash" else " / ", None, False))
            out += [(lab, None, True), ((": " if style == "colon" else " ") + value, None, False)]
        return out

    # ----------------------------------------------------------- assembly
    def render(self, template: RealisticTemplate, doc_id: str
               ) -> tuple[Document, list[tuple[int, int, str]]]:
        body = _ALT_RE.sub(lambda m: self.rng.choice(m.group(1).split("|")), template.body)
        pieces: list[Piece] = []
        pos = 0
        for m in _TOKEN_RE.finditer(body):
            pieces.append((body[pos:m.start()], None, False))
            block, typ, role, term = m.groups()
            if block:
                pieces += self.block(block)
            elif typ:
                pieces += self.phi(typ, role or "")
            else:
                pieces.append((term, None, True))
            pos = m.end()
        pieces.append((body[pos:], None, False))
        upper = template.kind in ("radiology", "ecg") and self.rng.random() < 0.3
        chunks, spans, terms, at = [], [], [], 0
        for text, typ, is_term in pieces:
            if upper:
                text = text.upper()
            if typ is not None:
                spans.append(Span(at, at + len(text), typ))
            elif is_term:
                terms.append((at, at + len(text), text))
            chunks.append(text)
            at += len(text)
        doc = Document(doc_id, "".join(chunks), spans,
                       {"kind": template.kind, "template": template.name})
        return doc, terms


def _parse_terms(text: str) -> list[Piece]:
    """Pieces of a fixed phrase whose ``[[...]]`` parts are clinical terms."""
    out: list[Piece] = []
    pos = 0
    for m in re.finditer(r"\[\[(.+?)\]\]", text):
        out += [(text[pos:m.start()], None, False), (m.group(1), None, True)]
        pos = m.end()
    out.append((text[pos:], None, False))
    return [p for p in out if p[0]]


def _list_pieces(items: list[list[Piece]], style: str) -> list[Piece]:
    out: list[Piece] = []
    for i, item in enumerate(items, start=1):
        if style == "slashed":
            if i > 1:
                out.append((" / ", None, False))
        else:
            if i > 1:
                out.append(("\n", None, False))
            out.append((f"{i}. " if style == "numbered" else "- ", None, False))
        out += item
    return out


def note_seed(seed: int, index: int) -> int:
    """The seed of realistic note ``index`` (independent of how many are generated)."""
    digest = hashlib.sha256(f"fedmed-deid-realistic|{seed}|{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def generate_note(seed: int, index: int) -> tuple[Document, list[tuple[int, int, str]]]:
    """Realistic note ``index`` for ``seed`` and its gold clinical terms."""
    rng = random.Random(note_seed(seed, index))
    template = TEMPLATES[index % len(TEMPLATES)] if index < len(TEMPLATES) else \
        rng.choice(TEMPLATES)
    doc, terms = RealisticRenderer(rng).render(template, f"real-{index:05d}")
    doc.meta["patient_id"] = f"real-{seed}-{index}"
    return doc, terms


def generate(n: int, seed: int) -> list[tuple[Document, list[tuple[int, int, str]]]]:
    """``n`` realistic notes with their clinical terms (every template at least once
    when ``n`` >= the number of templates)."""
    if n < 0:
        raise ValueError("n must be >= 0")
    return [generate_note(seed, i) for i in range(n)]


def write_realistic(out: str | Path, n: int, seed: int) -> dict[str, int]:
    """Write ``n`` realistic notes as i2b2 XML into ``out`` (one flat folder: the whole
    set is for evaluation), their clinical terms as :data:`TERMS_FILE` and a manifest."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    terms_of: dict[str, list[list[int | str]]] = {}
    spans = n_terms = 0
    for doc, terms in generate(n, seed):
        write_i2b2(root / f"{doc.doc_id}.xml", doc)
        terms_of[doc.doc_id] = [[a, b, t] for a, b, t in terms]
        spans += len(doc.spans)
        n_terms += len(terms)
    (root / TERMS_FILE).write_text(json.dumps(terms_of, indent=1) + "\n")
    manifest = {"generator": "fedmed.deid.realistic_notes", "n": n, "seed": seed,
                "templates": [t.name for t in TEMPLATES], "phi_spans": spans,
                "clinical_terms": n_terms}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return {"notes": n, "phi_spans": spans, "clinical_terms": n_terms}


def read_terms(folder: str | Path) -> dict[str, list[tuple[int, int, str]]] | None:
    """The gold clinical terms of a folder written by :func:`write_realistic` (None if it
    has no :data:`TERMS_FILE`)."""
    path = Path(folder) / TERMS_FILE
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return {doc_id: [(int(a), int(b), str(t)) for a, b, t in rows]
            for doc_id, rows in raw.items()}
