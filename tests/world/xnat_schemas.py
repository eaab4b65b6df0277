"""The data-type schemas the XNAT emulator serves at ``/xapi/schemas/{name}``.

Real XNAT serves its ``schemas/xnat/xnat.xsd`` and ``schemas/xdat/xdat.xsd`` (SchemaApi);
xnatpy reads them at ``connect()`` to build its object model. These are reconstructed, much
reduced versions of those documents, written for the emulator: the same namespaces, type
names and inheritance for the parts the emulator answers (projects, subjects, experiments),
so xnatpy builds the same classes for them. They are not XNAT's files.
"""

from __future__ import annotations

_XNAT = """<?xml version="1.0" encoding="UTF-8"?>
<xs:schema targetNamespace="http://nrg.wustl.edu/xnat" xmlns:xnat="http://nrg.wustl.edu/xnat" xmlns:xdat="http://nrg.wustl.edu/xdat" xmlns:xs="http://www.w3.org/2001/XMLSchema" elementFormDefault="qualified" attributeFormDefault="unqualified">
  <xs:import namespace="http://nrg.wustl.edu/xdat" schemaLocation="../xdat/xdat.xsd"/>
  <xs:element name="Project" type="xnat:projectData"/>
  <xs:element name="Subject" type="xnat:subjectData"/>
  <xs:element name="MRSession" type="xnat:mrSessionData"/>
  <xs:complexType name="abstractResource">
    <xs:attribute name="label" type="xs:string"/>
  </xs:complexType>
  <xs:complexType name="resource">
    <xs:complexContent><xs:extension base="xnat:abstractResource">
      <xs:attribute name="URI" type="xs:string" use="required"/>
      <xs:attribute name="format" type="xs:string"/>
    </xs:extension></xs:complexContent>
  </xs:complexType>
  <xs:complexType name="resourceCatalog">
    <xs:complexContent><xs:extension base="xnat:resource"/></xs:complexContent>
  </xs:complexType>
  <xs:complexType name="fileData">
    <xs:attribute name="URI" type="xs:string"/>
  </xs:complexType>
  <xs:complexType name="investigatorData">
    <xs:sequence>
      <xs:element name="firstname" type="xs:string" minOccurs="0"/>
      <xs:element name="lastname" type="xs:string" minOccurs="0"/>
    </xs:sequence>
    <xs:attribute name="ID" type="xs:string"/>
  </xs:complexType>
  <xs:complexType name="projectData">
    <xs:sequence>
      <xs:element name="name" type="xs:string"/>
      <xs:element name="description" type="xs:string" minOccurs="0"/>
      <xs:element name="PI" type="xnat:investigatorData" minOccurs="0"/>
    </xs:sequence>
    <xs:attribute name="ID" type="xs:string" use="required"/>
    <xs:attribute name="secondary_ID" type="xs:string"/>
  </xs:complexType>
  <xs:complexType name="subjectData">
    <xs:sequence>
      <xs:element name="group" type="xs:string" minOccurs="0"/>
    </xs:sequence>
    <xs:attribute name="ID" type="xs:string"/>
    <xs:attribute name="project" type="xs:string" use="required"/>
    <xs:attribute name="label" type="xs:string"/>
  </xs:complexType>
  <xs:complexType name="experimentData">
    <xs:sequence>
      <xs:element name="date" type="xs:date" minOccurs="0"/>
    </xs:sequence>
    <xs:attribute name="ID" type="xs:string" use="required"/>
    <xs:attribute name="project" type="xs:string" use="required"/>
    <xs:attribute name="label" type="xs:string"/>
  </xs:complexType>
  <xs:complexType name="subjectAssessorData">
    <xs:complexContent><xs:extension base="xnat:experimentData">
      <xs:sequence><xs:element name="subject_ID" type="xs:string" minOccurs="0"/></xs:sequence>
    </xs:extension></xs:complexContent>
  </xs:complexType>
  <xs:complexType name="imageSessionData">
    <xs:complexContent><xs:extension base="xnat:subjectAssessorData">
      <xs:sequence><xs:element name="modality" type="xs:string" minOccurs="0"/></xs:sequence>
    </xs:extension></xs:complexContent>
  </xs:complexType>
  <xs:complexType name="mrSessionData">
    <xs:complexContent><xs:extension base="xnat:imageSessionData"/></xs:complexContent>
  </xs:complexType>
</xs:schema>
"""

_XDAT = """<?xml version="1.0" encoding="UTF-8"?>
<xs:schema targetNamespace="http://nrg.wustl.edu/xdat" xmlns:xdat="http://nrg.wustl.edu/xdat" xmlns:xs="http://www.w3.org/2001/XMLSchema" elementFormDefault="qualified" attributeFormDefault="unqualified">
  <xs:element name="user" type="xdat:user"/>
  <xs:complexType name="user">
    <xs:sequence>
      <xs:element name="login" type="xs:string"/>
      <xs:element name="firstname" type="xs:string" minOccurs="0"/>
      <xs:element name="lastname" type="xs:string" minOccurs="0"/>
      <xs:element name="email" type="xs:string" minOccurs="0"/>
    </xs:sequence>
  </xs:complexType>
</xs:schema>
"""

#: name -> document, as ``/xapi/schemas`` lists them (``schemas/xnat/xnat.xsd`` -> ``xnat``)
SCHEMAS = {"xdat": _XDAT, "xnat": _XNAT}
