"""Note templates for the synthetic corpus: five note kinds, six templates each.

Why templates of our own: no real clinical corpus may ship, and a tagger evaluated on the
templates it was trained on only measures memorisation. Each kind therefore has several
templates with different layouts and PHI contexts, and :mod:`fedmed.deid.corpus` splits
*by template* (per kind: the last template is test-only, the one before it dev-only).

Mini-language (rendered by :mod:`fedmed.deid.corpus`):

- ``{SLOT}`` / ``{SLOT.role}``: a PHI value; SLOT is an i2b2 subtype or ``MRN`` (=
  MEDICALRECORD) / ``LOCOTHER`` (= LOCATION-OTHER); roles pick a person or a date
  (``PATIENT.last``, ``DOCTOR.b``, ``DATE.dob``...).
- ``{_FILLER}``: non-PHI clinical filler (medications, labs, vitals, exam, history).
- ``((a||b))``: one alternative at random.
- a line starting with ``# ``: a section header (its case is varied as noise).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Template:
    """One note layout: its kind, a stable name and the body in the mini-language."""

    kind: str
    name: str
    body: str


DISCHARGE = [
    Template("discharge", "ds-classic", """\
# DISCHARGE SUMMARY
Patient: {PATIENT.caps}    MRN: {MRN}
Admission Date: {DATE.admit}    Discharge Date: {DATE.discharge}
Attending: {DOCTOR.a}
Service: {DEPARTMENT}
# HISTORY OF PRESENT ILLNESS
{PATIENT.formal} is a {AGE}-year-old ((man||woman||patient)) with a history of {_HPI} \
who presented to the {HOSPITAL} emergency room on {DATE.admit} after ((an episode of \
chest pain||a fall at home||two days of fever)). ((He||She)) was seen by {DOCTOR.b} \
in clinic on {DATE.prior}.
# HOSPITAL COURSE
{_EXAM} The patient was transferred to room {ROOM} on {DATE}. {_HPI_SHORT}
# DISCHARGE MEDICATIONS
{_MEDS}
# FOLLOW UP
Follow up with {DOCTOR.b} on {DATE.followup}; call {PHONE} with questions.
Dictated by: {DOCTOR.a}
{DOCTOR.initials}/{USERNAME}
"""),
    Template("discharge", "ds-capsblock", """\
{HOSPITAL}
{STREET}, {CITY}, {STATE} {ZIP}
# DISCHARGE SUMMARY
NAME: {PATIENT.caps}
UNIT NO: {MRN}
DOB: {DATE.dob}    AGE: {AGE}
ADMITTED: {DATE.admit}
DISCHARGED: {DATE.discharge}
ACCOUNT #: {ACCOUNT}
# PRINCIPAL DIAGNOSIS
((Community acquired pneumonia||Congestive heart failure exacerbation||Acute kidney \
injury||Cellulitis of the left leg)).
# BRIEF HISTORY
{PATIENT.first} is a {AGE} y/o {PROFESSION} from {CITY} admitted for {_HPI}. \
Lives with ((wife||husband||daughter||son)) {RELATIVE} who can be reached at {PHONE.b}.
# LABS
{_LABS}
# DISPOSITION
Discharged home in stable condition. PCP {DOCTOR.b} ({PHONE}) notified by fax to {FAX}.
{DOCTOR.a}, MD
"""),
    Template("discharge", "ds-narrative", """\
# Discharge Summary
{PATIENT.full} was admitted to {HOSPITAL} on {DATE.admit} under the care of {DOCTOR.a}. \
((Mr.||Ms.||The patient)) {PATIENT.last}, a {AGE} year old {PROFESSION}, has {_HPI}. \
Prior admission at {HOSPITAL.b} in {DATE.prior}.
# Course
{_EXAM} On hospital day ((two||three||four)), {DATE}, the patient was evaluated by the \
{DEPARTMENT} team. {_HPI_SHORT} A ((Medtronic||Boston Scientific||St. Jude)) \
((pacemaker||ICD)) serial number {DEVICE} was interrogated and functioning normally.
# Social history
Works for {ORGANIZATION}. Denies tobacco. Emergency contact: {RELATIVE}, {PHONE}.
# Medications on discharge
{_MEDS}
Discharge date: {DATE.discharge}
Electronically signed: {USERNAME} {DATE.discharge}
"""),
    Template("discharge", "ds-table", """\
# DISCHARGE SUMMARY
| Field        | Value |
|--------------|-------|
| Patient      | {PATIENT.full} |
| MRN          | {MRN} |
| SSN          | {SSN} |
| Insurance ID | {HEALTHPLAN} |
| Admitted     | {DATE.admit} |
| Discharged   | {DATE.discharge} |
| Attending    | {DOCTOR.a} |
# Summary
{AGE}-year-old ((male||female)) admitted with {_HPI}. Seen in consultation by {DOCTOR.c} \
of {DEPARTMENT}. {_HPI_SHORT}
# Vitals at discharge
{_VITALS}
# Instructions
Return to the ED at {HOSPITAL} for worsening symptoms. Appointment with {DOCTOR.b} \
{DATE.followup} at ((9:30||10:15||14:00)). Patient portal: {URL}
"""),
    Template("discharge", "ds-brief", """\
# DISCHARGE NOTE
Pt: {PATIENT} ({MRN})  DOB {DATE.dob}
Adm {DATE.admit} / D/C {DATE.discharge}
Dx: ((NSTEMI||COPD exacerbation||UTI with sepsis||GI bleed))
# Problems
1. {_HPI_SHORT}
2. ((Diabetes mellitus type 2, A1c 8.1%||Hypertension, controlled||Atrial fibrillation \
on apixaban||CKD stage 3)).
3. Seen by {DOCTOR.c} ({DEPARTMENT}) on {DATE}.
# Meds
{_MEDS}
# F/u
- {DOCTOR.b} in ((1||2||4)) weeks, clinic phone {PHONE}
- Labs on {DATE.followup} at {HOSPITAL.b}
Home: {STREET}, {CITY} {ZIP}
{DOCTOR.a} / pager {PHONE.b}
"""),
    Template("discharge", "ds-transfer", """\
# INTERFACILITY TRANSFER AND DISCHARGE SUMMARY
Sending facility: {HOSPITAL}, {DEPARTMENT}, bed {ROOM}
Receiving facility: {HOSPITAL.b}, {CITY}, {STATE}
Transfer date: {DATE.discharge}
Patient name: {PATIENT.full}   Age: {AGE}   Medical record number: {MRN}
Medicare/insurance number: {HEALTHPLAN}    SSN: {SSN}    Billing acct {ACCOUNT}
Home: {STREET}, {CITY} {ZIP}
Next of kin: {RELATIVE} ((mother||father||sister||brother||spouse)), tel. {PHONE.b}
# Reason for transfer
Needs ((cardiac surgery||interventional radiology||neurosurgical evaluation)) not \
available here. Accepting physician {DOCTOR.b} spoke with {DOCTOR.a} on {DATE}.
# Hospital course since {DATE.admit}
{_HPI_SHORT} {_EXAM}
# Active medications
{_MEDS}
Report faxed to {FAX}; questions to {EMAIL}.
"""),
]

PROGRESS = [
    Template("progress", "pn-soap", """\
# PROGRESS NOTE  {DATE}
{PATIENT.caps}  MRN {MRN}  Rm {ROOM}
# S:
Pt reports ((feeling better||ongoing dyspnea||less pain)) overnight. {_HPI_SHORT}
# O:
{_VITALS}
{_EXAM}
# A/P:
{AGE} yo with {_HPI}.
- continue current regimen, discussed with {DOCTOR.b}
- family ({RELATIVE}) updated by phone {PHONE.b}
{DOCTOR.a}
"""),
    Template("progress", "pn-icu", """\
# MICU Daily Progress Note - HD #((3||5||7||12))
Date: {DATE}    Patient: {PATIENT.full}    Age: {AGE}
Unit: {DEPARTMENT}, bed {ROOM}
# Events
{_HPI_SHORT} Line placed by {DOCTOR.c} on {DATE.prior}. Biobank specimen {BIOID} sent.
# Exam
{_EXAM}
# Labs
{_LABS}
# Plan
{_PLAN}
Attending attestation: I saw and examined {PATIENT.formal} with the resident team. \
{DOCTOR.a}, MD  ({USERNAME})
"""),
    Template("progress", "pn-clinic", """\
# Clinic Visit
{HOSPITAL} {DEPARTMENT}
Visit date: {DATE}
{PATIENT.first} {PATIENT.last} returns for follow up of {_HPI}. Last seen {DATE.prior}. \
((She||He)) is a {PROFESSION} and recently traveled to {COUNTRY}. ((Her||His)) \
((daughter||son||partner)) {RELATIVE} accompanies today.
# Medications
{_MEDS}
# Exam
{_VITALS}. {_EXAM}
# Assessment and plan
{_PLAN}
Disability parking form signed (license {LICENSE}, plate {VEHICLE}).
RTC ((3||6)) months. Scheduling: {PHONE}.
{DOCTOR.a} / {DOCTOR.initials}
"""),
    Template("progress", "pn-nursing", """\
# NURSING PROGRESS NOTE
{DATE} ((0700||1900||2300))
Patient {PATIENT.formal} resting in room {ROOM}. {_VITALS}
Neuro: A&Ox3. Resp: ((RA||2L NC||4L NC)), sats 9((4||6||8))%.
Family: ((wife||husband||daughter)) {RELATIVE} at bedside, contact {PHONE.b}.
Pain ((2||4||6))/10, medicated per orders. {_HPI_SHORT}
Plan per {DOCTOR.b}. Will continue to monitor.
-- {USERNAME}, RN
"""),
    Template("progress", "pn-phone", """\
# TELEPHONE ENCOUNTER
Caller: {RELATIVE} (((wife||son||daughter||husband)) of patient)
Patient: {PATIENT.full}, DOB {DATE.dob}, MRN {MRN}
Call received {DATE} at ((10:42||15:05||08:30)) from {PHONE}.
Reason: ((medication refill||question about lab results||worsening cough)).
{_HPI_SHORT}
Advised to call back or go to the {HOSPITAL} ED if symptoms worsen. Routed to {DOCTOR.a}.
Pharmacy: ((CVS||Walgreens||Rite Aid)) on {STREET}, fax {FAX}.
"""),
    Template("progress", "pn-oncology", """\
# Oncology Interval Note
Name: {PATIENT.full}       Record #: {MRN}
Date of service: {DATE}
Cycle ((2||4||6)) of ((FOLFOX||R-CHOP||carboplatin/paclitaxel)), started {DATE.prior}.
Enrolled on protocol, study subject ID {IDNUM}; tumor sample biobank ID {BIOID}.
# Interval history
{AGE}-year-old retired {PROFESSION} from {CITY}, {STATE}. {_HPI_SHORT}
# Exam and labs
{_VITALS}
{_LABS}
# Plan
Proceed with treatment per {DOCTOR.a}. Discussed with tumor board at {HOSPITAL} on \
{DATE.followup}. Insurance authorization {HEALTHPLAN} confirmed with {ORGANIZATION}.
"""),
]

RADIOLOGY = [
    Template("radiology", "rad-chest", """\
# CHEST RADIOGRAPH, PA AND LATERAL
Patient: {PATIENT.caps}  MRN: {MRN}  Exam date: {DATE}
Accession: {IDNUM}
Referring: {DOCTOR.b}
# INDICATION
{AGE} year old with ((cough||shortness of breath||fever)).
# COMPARISON
{DATE.prior}.
# FINDINGS
((The lungs are clear.||Patchy right lower lobe opacity.||Small left pleural \
effusion.)) Heart size is normal. No pneumothorax.
# IMPRESSION
((No acute cardiopulmonary process.||Findings suggest pneumonia.))
Dictated by {DOCTOR.a} on {DATE}. Transcribed by {USERNAME}.
"""),
    Template("radiology", "rad-ct", """\
# CT ABDOMEN AND PELVIS WITH CONTRAST
{HOSPITAL} Department of Radiology
Name: {PATIENT.full}    DOB: {DATE.dob}    Sex: ((M||F))
Study date: {DATE}    Study ID: {IDNUM}
Ordering physician: {DOCTOR.b}, {DEPARTMENT}
# CLINICAL HISTORY
{_HPI_SHORT}
# TECHNIQUE
Research biometric ID {BIOID}. Axial images were obtained after IV contrast. \
Images archived to PACS node {IPADDR}.
# FINDINGS
Liver, spleen and pancreas are unremarkable. ((No free fluid.||Mild sigmoid \
diverticulosis without diverticulitis.)) Prior exam {DATE.prior} at {HOSPITAL.b}.
# IMPRESSION
((No acute abnormality.||Uncomplicated diverticulosis.))
Reading radiologist: {DOCTOR.a}
"""),
    Template("radiology", "rad-mri", """\
# MRI BRAIN WITHOUT AND WITH GADOLINIUM
Patient {PATIENT.formal} ({AGE}y) scanned {DATE} on scanner {DEVICE}.
MRN {MRN}; order placed by {DOCTOR.b} ({PHONE}).
# History
{_HPI_SHORT}
# Findings
No restricted diffusion. ((Scattered white matter hyperintensities.||Normal \
ventricles.)) Compared with outside study from {HOSPITAL.b} dated {DATE.prior}.
# Impression
((No acute intracranial process.||Chronic small vessel ischemic change.))
Results called to {DOCTOR.b} at {DATE} ((14:32||09:10)) by {DOCTOR.a}.
"""),
    Template("radiology", "rad-us", """\
# ULTRASOUND REPORT
Pt name: {PATIENT}   Acct: {ACCOUNT}   Loc: {DEPARTMENT} rm {ROOM}
Performed {DATE} by sonographer {USERNAME}
# Exam
((RUQ ultrasound||Renal ultrasound||Lower extremity venous duplex)).
# Findings
{_EXAM} No prior studies for comparison.
# Impression
((No evidence of DVT.||Cholelithiasis without cholecystitis.||Normal kidneys.))
Images viewable at {URL}
Signed {DOCTOR.a} {DATE}
"""),
    Template("radiology", "rad-mammo", """\
# BILATERAL SCREENING MAMMOGRAM
{PATIENT.caps} | {MRN} | DOB {DATE.dob} | Age {AGE}
Exam date {DATE}; previous {DATE.prior}
# Findings
The breasts are ((heterogeneously dense||scattered fibroglandular)). No suspicious mass.
BI-RADS ((1||2)).
# Recommendation
Routine screening in one year. Letter mailed to {STREET}, {CITY}, {STATE} {ZIP}.
Questions: {DEPARTMENT} at {HOSPITAL}, {PHONE}.
{DOCTOR.a}
"""),
    Template("radiology", "rad-outside", """\
# OUTSIDE FILM OVER-READ
Images received on CD from {HOSPITAL.b} ({CITY}) for {PATIENT.full}, local MRN {MRN}.
Outside exam date: {DATE.prior}. Uploaded {DATE} from workstation {IPADDR} by {USERNAME}.
# Clinical information
Patient is a {AGE} year old {PROFESSION}; ((motor vehicle collision||fall from \
ladder||sports injury)) in {LOCOTHER}. Vehicle plate {VEHICLE} and driver's license \
{LICENSE} noted by EMS.
# Findings
{_EXAM}
# Impression
((Nondisplaced fracture of the distal radius.||No acute fracture.))
Over-read by {DOCTOR.a}; referring {DOCTOR.b}, fax {FAX}.
"""),
]

ECG = [
    Template("ecg", "ecg-machine", """\
{PATIENT.caps}          ID: {MRN}
{DATE} ((08:14:22||13:47:05||22:03:51))
Vent. rate ((72||88||104||56)) BPM
PR interval ((164||188||210)) ms
QRS duration ((92||118||86)) ms
QT/QTc ((384/420||402/441||368/410)) ms
((Sinus rhythm||Sinus tachycardia||Atrial fibrillation||Sinus bradycardia))
((Normal ECG||Left axis deviation||Nonspecific ST abnormality))
Referred by: {DOCTOR.b}     Confirmed by: {DOCTOR.a} on {DATE}
Cart {DEVICE} at {DEPARTMENT}
"""),
    Template("ecg", "ecg-interpretation", """\
# ECG INTERPRETATION
Patient: {PATIENT.full}   Age: {AGE}   Location: {DEPARTMENT}, room {ROOM}
Date acquired: {DATE}
# Findings
Rhythm is ((sinus||atrial fibrillation with controlled ventricular response)). \
((No acute ST changes.||T wave inversions in V1-V3.)) Compared with tracing of \
{DATE.prior}, ((no significant change||new right bundle branch block)).
# Interpretation
((Abnormal ECG||Borderline ECG||Normal ECG)).
Read by {DOCTOR.a}, {HOSPITAL} Cardiology. Report sent to {EMAIL}.
"""),
    Template("ecg", "ecg-holter", """\
# 24-HOUR HOLTER MONITOR REPORT
Name: {PATIENT.full}    MRN: {MRN}    DOB: {DATE.dob}
Hook-up: {DATE}   Recorder serial: {DEVICE}
Indication: ((palpitations||syncope||AF burden assessment)).
# Summary
Total beats ((98,412||112,230||87,901)). Min HR ((48||52)), max HR ((134||121)).
((Rare PVCs.||Paroxysmal atrial fibrillation, longest episode 14 minutes.))
Patient diary: symptoms while ((walking||at rest||driving)) near {LOCOTHER}.
# Conclusion
{_HPI_SHORT}
Interpreting physician: {DOCTOR.a}  ({DOCTOR.initials})
Copy to {DOCTOR.b}, {HOSPITAL.b}, fax {FAX}
"""),
    Template("ecg", "ecg-stress", """\
# EXERCISE STRESS TEST
{PATIENT.formal}, {AGE} yo, referred by {DOCTOR.b} for chest pain evaluation.
Test date {DATE}. Protocol: ((Bruce||modified Bruce)).
Exercise time ((7:30||9:00||5:45)) min, ((8.1||10.1||6.4)) METs. Peak HR \
((142||156||128)) bpm.
BP response ((normal||hypertensive)). No arrhythmias.
# Conclusion
((Negative||Nondiagnostic||Positive)) for ischemia at adequate workload.
Supervised by {DOCTOR.a}, {DEPARTMENT}, {HOSPITAL}.
Billing account {ACCOUNT}; insurance {HEALTHPLAN}.
"""),
    Template("ecg", "ecg-pacer", """\
# DEVICE CLINIC - PACEMAKER INTERROGATION
Patient: {PATIENT.caps}    Record: {MRN}    Visit: {DATE}
Device: ((dual chamber pacemaker||ICD||CRT-D)), serial {DEVICE}, implanted {DATE.prior} \
by {DOCTOR.c}.
Remote monitoring account {ACCOUNT}; transmitter IP {IPADDR}.
Battery ((8.5||10||6)) years. Atrial pacing ((12||30||4))%, ventricular pacing \
((1||95||40))%.
No therapies delivered since last check on {DATE}.
Next remote transmission {DATE.followup}. Device nurse {USERNAME}, {PHONE}.
{DOCTOR.a}
"""),
    Template("ecg", "ecg-telemetry", """\
# TELEMETRY EVENT STRIP REVIEW
Monitored bed {ROOM} on {DEPARTMENT}; pt {PATIENT.full} (age {AGE}, MRN {MRN}).
Event at ((03:12||17:40||11:05)) on {DATE}: ((6-beat run of NSVT||pause of 3.2 \
seconds||rapid AF to 150s)).
Telemetry box {DEVICE}. Patient asymptomatic per RN {USERNAME}. \
Covering physician {DOCTOR.b} paged via {PHONE}.
Prior strips from {DATE.prior} reviewed. Plan: ((check electrolytes||continue metoprolol||\
cardiology consult)).
Reviewed by {DOCTOR.a}
"""),
]

REFERRAL = [
    Template("referral", "ref-letter", """\
{HOSPITAL}
{STREET}
{CITY}, {STATE} {ZIP}
Tel {PHONE}  Fax {FAX}

{DATE}

Dear {DOCTOR.b},

Thank you for seeing {PATIENT.full} (DOB {DATE.dob}), a {AGE}-year-old {PROFESSION}, \
whom I am referring for evaluation of {_HPI}. {PATIENT.formal} was last seen here on \
{DATE.prior}.

{_HPI_SHORT}

Current medications:
{_MEDS}

Please contact me at {EMAIL} with any questions.

Sincerely,
{DOCTOR.a}, MD
{DEPARTMENT}
"""),
    Template("referral", "ref-form", """\
# REFERRAL REQUEST FORM
Referring provider: {DOCTOR.a}       Phone: {PHONE}   Fax: {FAX}
Referred to: {DOCTOR.b}, {DEPARTMENT}, {HOSPITAL.b}
Patient name: {PATIENT.caps}        DOB: {DATE.dob}
Address: {STREET}, {CITY}, {STATE} {ZIP}
Home phone: {PHONE.b}      Email: {EMAIL}
SSN: {SSN}       Member ID: {HEALTHPLAN}
Employer: {ORGANIZATION}
Driver license #: {LICENSE}    Vehicle plate: {VEHICLE}
Reason for referral: {_HPI}
Urgency: ((routine||urgent||within 2 weeks))
Date of request: {DATE}
"""),
    Template("referral", "ref-consult", """\
# CONSULTATION REPORT
Requested by {DOCTOR.b} for {PATIENT.full}, MRN {MRN}.
Date of consultation: {DATE}
# History
Thank you for asking me to see this {AGE}-year-old ((gentleman||lady)) who emigrated \
from {COUNTRY} in {DATE.prior} and works as a {PROFESSION} at {ORGANIZATION}. \
{_HPI_SHORT}
# Examination
{_VITALS}. {_EXAM}
# Impression and recommendations
{_PLAN}
I will see {PATIENT.first} again on {DATE.followup} in the {DEPARTMENT} at {HOSPITAL}.
{DOCTOR.a}
cc: {DOCTOR.c}
"""),
    Template("referral", "ref-email", """\
From: {EMAIL}
Sent: {DATE}
Subject: referral - {PATIENT.last}

Hi {DOCTOR.b},

Could your team see my patient {PATIENT.full} ({AGE} y, MRN {MRN}) this week? \
{_HPI_SHORT} ((She||He)) lives in {CITY} and prefers appointments after 3 pm; \
cell {PHONE.b}. Imaging is on the shared drive (server {IPADDR}) and outside records \
at {URL}.

Thanks,
{DOCTOR.a}
{HOSPITAL} {DEPARTMENT} | {PHONE}
"""),
    Template("referral", "ref-homecare", """\
# HOME HEALTH REFERRAL
Agency: {ORGANIZATION}
Patient: {PATIENT.full}    Sex: ((F||M))    Age: {AGE}
Home address: {STREET}, {CITY}, {STATE} {ZIP}
Caregiver: {RELATIVE}, {PHONE.b}
Start of care: {DATE.followup}
Discharging facility: {HOSPITAL}, {DEPARTMENT}
Services: ((skilled nursing||physical therapy||wound care)) ((2||3))x/week.
Diagnoses: {_HPI}
Driver's license on file: {LICENSE}; vehicle {VEHICLE} (for parking permit).
Certifying physician: {DOCTOR.a}, NPI-linked license {LICENSE}
Signed {DATE}
"""),
    Template("referral", "ref-specialist", """\
# SPECIALIST REFERRAL AND CLINICAL SUMMARY
To: Dr. {DOCTOR.b.last}, {HOSPITAL.b}
From: {DOCTOR.a}, {HOSPITAL}
Re: {PATIENT.caps}; born {DATE.dob}; hospital number {MRN}; age {AGE}
Date: {DATE}
I would be grateful if you could assess this patient, a {PROFESSION} living near \
{LOCOTHER}, regarding {_HPI}. Previous workup at {HOSPITAL.b} in {DATE.prior} was \
unrevealing. {_HPI_SHORT}
Originally from {COUNTRY}; records portal {URL}.
Medication list attached. Biometric enrollment {BIOID} for the research registry.
Reply to {EMAIL} or by fax {FAX}; my office line is {PHONE}.
"""),
]

TEMPLATES: tuple[Template, ...] = tuple(DISCHARGE + PROGRESS + RADIOLOGY + ECG + REFERRAL)


def split_of(template: Template) -> str:
    """Which split a template belongs to: per kind, last -> test, second-to-last -> dev."""
    same_kind = [t for t in TEMPLATES if t.kind == template.kind]
    pos = same_kind.index(template)
    if pos == len(same_kind) - 1:
        return "test"
    if pos == len(same_kind) - 2:
        return "dev"
    return "train"


def templates_for(split: str) -> tuple[Template, ...]:
    """All templates of ``split`` ("train", "dev", "test")."""
    if split not in ("train", "dev", "test"):
        raise ValueError(f"unknown split {split!r}; expected train, dev or test")
    return tuple(t for t in TEMPLATES if split_of(t) == split)


# ---------------------------------------------------------------- non-PHI fillers
# Clinical filler without PHI, including look-alikes a tagger must learn to leave alone:
# eponyms (Parkinson's, Foley), murmur grades and blood pressures ("2/6", "132/84"),
# doses, times and lab values.

CONDITIONS = (
    "hypertension, hyperlipidemia and type 2 diabetes", "COPD on home oxygen",
    "Parkinson's disease", "Crohn's disease", "Hodgkin lymphoma in remission",
    "Alzheimer's dementia", "Graves disease", "heart failure with EF 35%",
    "atrial fibrillation on warfarin", "ESRD on hemodialysis MWF", "Down syndrome",
    "Cushing syndrome", "Guillain-Barre syndrome", "Bell's palsy", "Wilson disease",
    "sickle cell disease", "HIV on ART with CD4 count 450", "Barrett's esophagus",
    "Raynaud phenomenon", "Sjogren syndrome", "Hashimoto thyroiditis", "Marfan syndrome",
    "coronary artery disease s/p CABG x3", "morbid obesity with BMI 42", "chronic low back pain",
    "multiple sclerosis", "rheumatoid arthritis on methotrexate", "asthma", "gout",
    "Addison's disease", "Meniere's disease", "Kaposi sarcoma", "Tetralogy of Fallot repair",
)
EVENTS = (
    "Troponin peaked at 2.3 and trended down.", "Cr improved from 2.1 to 1.4 with IV fluids.",
    "Started on ceftriaxone 1 g IV q24h and azithromycin 500 mg daily.",
    "Foley catheter removed on hospital day 3.", "Echo showed EF 40-45% with mild MR.",
    "PT/OT evaluated and recommended home with services.", "Glasgow coma scale 15 throughout.",
    "Heparin drip was titrated to a PTT of 60-80.", "Received 2 units PRBC for Hgb 6.8.",
    "Swallow evaluation passed; advanced to a cardiac diet.",
    "Diuresed 4 L with IV furosemide 40 mg BID.", "Swan-Ganz catheter was not required.",
    "Whipple procedure was discussed but deferred.", "Holter showed no sustained arrhythmia.",
    "Babinski sign negative bilaterally.", "Lachman test was negative.",
    "Pain controlled with acetaminophen 650 mg q6h.", "Afebrile for 48 hours.",
    "Insulin sliding scale adjusted; glucose 110-180.", "INR 2.4 on day of discharge.",
    "CT angiogram negative for pulmonary embolism.", "Potassium repleted to 4.0.",
)
MEDS = (
    "metoprolol succinate 50 mg PO daily", "lisinopril 10 mg PO daily",
    "atorvastatin 40 mg PO nightly", "aspirin 81 mg PO daily", "apixaban 5 mg PO BID",
    "furosemide 40 mg PO daily", "insulin glargine 22 units SC at bedtime",
    "metformin 1000 mg PO BID", "levothyroxine 88 mcg PO daily", "omeprazole 20 mg PO daily",
    "tamsulosin 0.4 mg PO daily", "sertraline 50 mg PO daily", "albuterol 2 puffs q4h PRN",
    "gabapentin 300 mg PO TID", "warfarin 5 mg PO daily, goal INR 2-3",
    "prednisone 40 mg PO daily x 5 days", "docusate 100 mg PO BID", "senna 2 tabs nightly",
)
LABS = (("Na", 133, 145, 0), ("K", 3.3, 5.4, 1), ("Cl", 96, 108, 0), ("HCO3", 20, 30, 0),
        ("BUN", 8, 45, 0), ("Cr", 0.6, 2.8, 1), ("Glu", 70, 260, 0), ("WBC", 3.5, 18.0, 1),
        ("Hgb", 7.0, 15.5, 1), ("Plt", 90, 420, 0), ("INR", 0.9, 3.1, 1), ("Mg", 1.5, 2.6, 1))
EXAM = (
    "Gen: NAD.", "HEENT: PERRL, MMM.", "CV: RRR, 2/6 systolic murmur at LUSB.",
    "CV: irregularly irregular, no murmurs.", "Lungs: CTAB.", "Lungs: crackles at bases.",
    "Abd: soft, NT/ND, +BS.", "Ext: 1+ pitting edema to the shins.", "Ext: no edema.",
    "Neuro: CN II-XII intact, strength 5/5 throughout.", "Skin: no rash.",
    "Psych: appropriate mood and affect.",
)
PLANS = (
    "Continue aspirin and statin.", "Repeat BMP in AM.", "PT consult.",
    "Wean oxygen as tolerated.", "Hold metformin until Cr improves.",
    "Transition to oral antibiotics to complete a 7 day course.",
    "DVT prophylaxis with SC heparin.",
    "Diet: 2 g sodium, 1.5 L fluid restriction.", "Full code, confirmed with patient.",
)


def _vitals(rng: random.Random) -> str:
    return (f"T {rng.choice((97.8, 98.6, 99.1, 100.4, 101.2))} HR {rng.randint(52, 118)} "
            f"BP {rng.randint(96, 168)}/{rng.randint(52, 98)} RR {rng.randint(12, 24)} "
            f"SpO2 {rng.randint(89, 100)}% {rng.choice(('RA', '2L NC', 'on room air'))}")


def _labs(rng: random.Random) -> str:
    picked = rng.sample(LABS, rng.randint(4, 8))
    vals = [(n, round(rng.uniform(lo, hi), d) if d else rng.randint(lo, hi))
            for n, lo, hi, d in picked]
    if rng.random() < 0.5:
        return "  ".join(f"{n} {v}" for n, v in vals)
    rows = [f"| {n:<5}| {v:>6} |" for n, v in vals]
    return "\n".join(["| Test | Result |", "|------|--------|", *rows])


def _listing(items: list[str], rng: random.Random) -> str:
    style = rng.choice(("- ", "* ", "num", ""))
    if style == "num":
        return "\n".join(f"{i}. {m}" for i, m in enumerate(items, start=1))
    return "\n".join(f"{style}{m}" for m in items)


# Real clinical vocabulary (issue 15): drug names in any case, ICD-10-CM diagnoses, lab and
# clinical abbreviations, numbers and numbered lists, so that capitalised words, short
# abbreviations and bare numbers are common *non-PHI* in training notes. The words come
# from PyPI packages through fedmed.deid.clinical_lexicon (loaded once per process).

DOSES = ("5 mg", "10 mg", "20mg", "25 mg", "40 mg", "50 mg", "81 mg", "100 mg", "250 mg",
         "500 mg", "750mg", "1 g", "0.5 mg", "2.5 mg", "12.5 mg", "88 mcg", "10 units", "1 tab",
         "2 tabs", "1 puff", "20 mEq", "5/325")
ROUTES = ("PO", "po", "IV", "SC", "SL", "IM", "inh", "", "")
FREQUENCIES = ("daily", "qd", "QD", "BID", "bid", "TID", "tid", "q6h", "q4-6h prn", "QHS",
               "qhs", "qAM", "PRN", "prn pain", "weekly", "x1", "x 5 days", "")
CASES = ("as-is", "as-is", "lower")
"""How drug names and diagnoses are cased in training notes: never in capitals. With
capitalised drug names a retrained tagger missed all-caps patient names (5 on the synthetic
test split; docs/deid.md); the precision guards veto capitalised drug names instead."""


def _cased(text: str, rng: random.Random) -> str:
    style = rng.choice(CASES)
    return text.upper() if style == "upper" else text.lower() if style == "lower" else text


def _drug_line(rng: random.Random) -> str:
    from fedmed.deid.clinical_lexicon import drug_names

    parts = [_cased(rng.choice(drug_names()), rng), rng.choice(DOSES), rng.choice(ROUTES),
             rng.choice(FREQUENCIES)]
    return " ".join(p for p in parts if p)


def _diagnosis(rng: random.Random) -> str:
    from fedmed.deid.clinical_lexicon import CLINICAL_ABBREVIATIONS, diagnoses

    if rng.random() < 0.2:
        return rng.choice(CLINICAL_ABBREVIATIONS)
    return _cased(rng.choice(diagnoses()), rng)


def _lab_line(rng: random.Random) -> str:
    from fedmed.deid.clinical_lexicon import LAB_ABBREVIATIONS

    labs = rng.sample(LAB_ABBREVIATIONS, rng.randint(3, 8))
    values = [str(rng.randint(1, 999)) if rng.random() < 0.5 else f"{rng.uniform(0, 20):.1f}"
              for _ in labs]
    sep = rng.choice((", ", "  ", " / ", "; "))
    return sep.join(f"{lab}{rng.choice((' ', ': ', ' '))}{v}" for lab, v in zip(labs, values,
                                                                                strict=True))


def _exam_words(rng: random.Random) -> str:
    from fedmed.deid.clinical_lexicon import CLINICAL_ABBREVIATIONS, EXAM_WORDS

    out = []
    for _ in range(rng.randint(2, 4)):
        words = rng.sample(EXAM_WORDS, rng.randint(1, 3))
        if rng.random() < 0.3:
            words.append(rng.choice(CLINICAL_ABBREVIATIONS))
        phrase = " ".join(words)
        out.append(phrase[:1].upper() + phrase[1:] + rng.choice((".", ",", ";", "")))
    return " ".join(out)


def _numbered(items: list[str], rng: random.Random) -> str:
    style = rng.choice(("{i}. ", "{i}) ", "#{i} ", "{i}.  "))
    return "\n".join(style.format(i=i) + item for i, item in enumerate(items, start=1))


def _meds(rng: random.Random) -> str:
    items = [rng.choice(MEDS) if rng.random() < 0.4 else _drug_line(rng)
             for _ in range(rng.randint(2, 7))]
    if rng.random() < 0.2:
        return " / ".join(items)
    return _listing(items, rng)


def _hpi(rng: random.Random) -> str:
    picks = [rng.choice(CONDITIONS) if rng.random() < 0.5 else _diagnosis(rng)
             for _ in range(rng.randint(1, 3))]
    return rng.choice((" and ", ", ", "/", "; ")).join(picks)


FILLERS = {
    "_HPI": _hpi,
    "_HPI_SHORT": lambda rng: " ".join(rng.sample(EVENTS, rng.randint(1, 3))),
    "_MEDS": _meds,
    "_PROBLEMS": lambda rng: _numbered([_diagnosis(rng) for _ in range(rng.randint(2, 6))], rng),
    "_LABLINE": _lab_line,
    "_EXAMWORDS": _exam_words,
    "_NUMBERS": lambda rng: " ".join(str(rng.choice((rng.randint(1, 12), rng.randint(40, 200),
                                                       rng.randint(100, 999))))
                                     for _ in range(rng.randint(1, 4))),
    "_LABS": _labs,
    "_VITALS": _vitals,
    "_EXAM": lambda rng: " ".join(rng.sample(EXAM, rng.randint(3, 6))),
    "_PLAN": lambda rng: _listing(rng.sample(PLANS, rng.randint(2, 4)), rng),
}
"""Filler name -> function(rng) -> non-PHI text."""


# ---------------------------------------------------------------- training-only snippets
# Short generic frames inserted into *training* notes only (never dev/test), so PHI shows
# up in many contexts and the tagger learns what PHI looks like, not where one template
# puts it. Dev and test notes stay pure renderings of their unseen templates.

SNIPPETS: tuple[str, ...] = (
    "Contact: {PATIENT.full}, {PHONE}", "Pt {PATIENT.full} seen today.",
    "{PATIENT.formal} states ((she||he)) feels well.", "Patient name: {PATIENT.caps}",
    "Spoke with {PATIENT.first} about the plan.", "{PATIENT.last} tolerated the procedure.",
    "Accompanied by {RELATIVE}.", "Emergency contact {RELATIVE} at {PHONE.b}.",
    "Daughter {RELATIVE} is the health care proxy.", "Family meeting with {RELATIVE}.",
    "cc: {DOCTOR}", "Discussed with {DOCTOR}.", "Covering: {DOCTOR}", "Signed: {DOCTOR}",
    "Patient of {DOCTOR} since {DATE.prior}.", "Paged {DOCTOR} re: labs.",
    "Seen in consultation by {DOCTOR}, who agrees.", "Attending {DOCTOR} was present.",
    "Entered by {USERNAME}", "User: {USERNAME}", "Last edited by {USERNAME} on {DATE}.",
    "Login {USERNAME} accessed chart.", "Note author: {USERNAME}", "RN {USERNAME} notified.",
    "Works as a {PROFESSION}.", "Occupation: {PROFESSION}", "Former {PROFESSION}, now retired.",
    "Lives at {STREET}, {CITY}, {STATE} {ZIP}.", "Address: {STREET}", "City: {CITY}",
    "Moved here from {CITY}, {STATE}.", "State: {STATE}", "Zip code {ZIP}.",
    "Born in {COUNTRY}.", "Recently returned from {COUNTRY}.", "Country of origin: {COUNTRY}",
    "Family lives in {COUNTRY}.", "Visiting from {CITY}, {COUNTRY}.",
    "Previously treated at {HOSPITAL}.", "Records requested from {HOSPITAL.b}.",
    "Transferred to {DEPARTMENT}.", "Follows in the {DEPARTMENT}.", "Unit: {DEPARTMENT}",
    "Room {ROOM}", "Bed {ROOM} on {DEPARTMENT}.", "Moved to rm {ROOM}.",
    "Employer: {ORGANIZATION}", "Insured through {ORGANIZATION}.", "Works at {ORGANIZATION}.",
    "Fell at {LOCOTHER}.", "Volunteers at {LOCOTHER}.", "Found near {LOCOTHER} by EMS.",
    "Age: {AGE}", "{AGE} yo", "aged {AGE}", "{AGE} y.o. ((M||F))", "{AGE} years old.",
    "Mother died at {AGE}.", "A {AGE}-year-old ((man||woman)).",
    "Date: {DATE}", "on {DATE}", "DOB {DATE.dob}", "Visit {DATE}.", "Next visit {DATE.followup}.",
    "Since {DATE.prior}.", "Last seen {DATE.prior}.", "Admitted {DATE.admit}.",
    "Call {PHONE}.", "Tel: {PHONE}", "Cell {PHONE.b}", "Pager {PHONE.b}", "Fax: {FAX}",
    "Faxed to {FAX}.", "Email: {EMAIL}", "Write to {EMAIL}.", "Portal: {URL}",
    "See {URL}", "IP {IPADDR}", "Accessed from {IPADDR}.", "Host address {IPADDR}",
    "SSN {SSN}", "Social security number: {SSN}", "MRN: {MRN}", "MR# {MRN}",
    "Medical record {MRN}", "Plan ID {HEALTHPLAN}", "Member #{HEALTHPLAN}",
    "Insurance: {HEALTHPLAN}", "Acct {ACCOUNT}", "Account number {ACCOUNT}",
    "License {LICENSE}", "DL# {LICENSE}", "DEA {LICENSE}", "Plate {VEHICLE}",
    "Car: {VEHICLE}", "Serial {DEVICE}", "Device SN {DEVICE}", "Pump {DEVICE}",
    "Sample {BIOID}", "Biometric ID {BIOID}", "Specimen {IDNUM}", "Order #{IDNUM}",
    "Ref {IDNUM}", "Study number {IDNUM}",
)

CLINICAL_SNIPPETS: tuple[str, ...] = (
    "Problem list:\n{_PROBLEMS}", "PROBLEMS:\n{_PROBLEMS}", "Dx: {_HPI}", "Hx of {_HPI}.",
    "Medications:\n{_MEDS}", "Meds: {_MEDS}", "Home meds:\n{_MEDS}", "Labs: {_LABLINE}",
    "{_LABLINE}", "Results: {_LABLINE}", "{_EXAMWORDS}", "Exam: {_EXAMWORDS}",
    "Allergies: ((NKDA||NKA||none known||PCN))", "Vitals: {_VITALS}", "{_VITALS}",
    "Values {_NUMBERS}", "Plan:\n{_PLAN}", "Started {_MEDS}.", "Continue {_MEDS}.",
)
"""Training-only non-PHI lines of real clinical vocabulary (issue 15), inserted like
:data:`SNIPPETS` so capitalised drug names, diagnoses, abbreviations and numbers appear in
many places of training notes without being PHI."""
