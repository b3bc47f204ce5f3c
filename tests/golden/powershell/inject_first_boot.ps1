param([string] $GuestUser, [string] $GuestPassword, [string] $JoinUser, [string] $JoinPassword)
# A step script rendered by imaging.powershell; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Write-ImagingResult {
    # The only way a step reports: one compressed JSON line between two marker lines.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result)
    $json = ConvertTo-Json -InputObject $Result -Depth 8 -Compress
    Write-Output '<<<IMAGING-RESULT>>>'
    Write-Output $json
    Write-Output '<<<END-IMAGING-RESULT>>>'
}

function Write-ImagingFailure {
    # A failed step still reports in the same frame, saying whether it had already changed something.
    param(
        [Parameter(Mandatory = $true)] [System.Management.Automation.ErrorRecord] $ErrorRecord,
        [Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result
    )
    $where = ''
    if ($null -ne $ErrorRecord.InvocationInfo) { $where = [string]$ErrorRecord.InvocationInfo.PositionMessage }
    $Result['ok'] = $false
    $Result['error'] = [string]$ErrorRecord.Exception.Message
    $Result['where'] = $where
    # What kind of failure it was, for the provider's retry of a file another process holds (ObjectInUse)
    $Result['error_id'] = [string]$ErrorRecord.FullyQualifiedErrorId
    $Result['category'] = [string]$ErrorRecord.CategoryInfo.Category
    $Result['hresult'] = [int]$ErrorRecord.Exception.HResult
    Write-ImagingResult -Result $Result
}

function Initialize-ImagingFolder {
    # Creates a folder (and its parents) if it is missing; never touches an existing one.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Get-ImagingSha256 {
    param([Parameter(Mandatory = $true)] [string] $Path)
    (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
}
function Assert-ImagingDiskOffline {
    # A disk of an old machine is read or changed on the host only while no running VM uses it.
    param([Parameter(Mandatory = $true)] [string] $Path)
    $users = @(Get-VM | Where-Object { [string]$_.State -ne 'Off' } | Get-VMHardDiskDrive | Where-Object { $_.Path -eq $Path })
    if ($users.Count -gt 0) { throw "$Path belongs to the running VM $($users[0].VMName); it is used only while its VM is off" }
}

function Mount-ImagingVolume {
    # Mounts a VHDX without a drive letter and exposes its largest data partition at a fresh, empty folder
    # in the temp directory. Callers hold the provider's per-host mount lock and always call
    # Dismount-ImagingVolume in a finally block.
    param([Parameter(Mandatory = $true)] [string] $Path, [switch] $ReadOnly)
    $mountArgs = @{ Path = $Path; NoDriveLetter = $true; PassThru = $true }
    if ($ReadOnly) { $mountArgs['ReadOnly'] = $true }
    $vhd = Mount-VHD @mountArgs
    $mounted = [ordered]@{ Path = $Path; Folder = $null; DiskNumber = $vhd.DiskNumber; PartitionNumber = $null; Label = $null }
    try {
        $disk = Get-Disk -Number $vhd.DiskNumber
        if ($disk.IsOffline) { Set-Disk -Number $disk.Number -IsOffline $false }
        $partition = @(Get-Partition -DiskNumber $disk.Number | Where-Object { $_.Type -eq 'Basic' } |
            Sort-Object -Property Size -Descending)
        if ($partition.Count -eq 0) { throw "the disk $Path has no data partition" }
        $part = $partition[0]
        $mounted.PartitionNumber = $part.PartitionNumber
        $mounted.Label = [string](Get-Volume -Partition $part).FileSystemLabel
        $folder = Join-Path -Path ([System.IO.Path]::GetTempPath()) -ChildPath ('imaging-' + [guid]::NewGuid().ToString('N'))
        New-Item -ItemType Directory -Path $folder | Out-Null
        $mounted.Folder = $folder
        Add-PartitionAccessPath -DiskNumber $disk.Number -PartitionNumber $part.PartitionNumber -AccessPath ($folder + '\')
    }
    catch {
        Dismount-ImagingVolume -Mounted $mounted
        throw
    }
    return $mounted
}

function Dismount-ImagingVolume {
    # Undoes Mount-ImagingVolume. The mount folder is removed only when empty, never recursively, so a
    # volume that is still mounted there can never be deleted by accident.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Mounted)
    if ($null -ne $Mounted.Folder -and $null -ne $Mounted.PartitionNumber) {
        Remove-PartitionAccessPath -DiskNumber $Mounted.DiskNumber -PartitionNumber $Mounted.PartitionNumber `
            -AccessPath ($Mounted.Folder + '\') -ErrorAction SilentlyContinue
    }
    Dismount-VHD -Path $Mounted.Path
    if ($null -ne $Mounted.Folder -and (Test-Path -LiteralPath $Mounted.Folder -PathType Container)) {
        if (@(Get-ChildItem -LiteralPath $Mounted.Folder -Force).Count -eq 0) {
            [System.IO.Directory]::Delete($Mounted.Folder, $false)
        }
    }
}

function Get-ImagingVolumeFiles {
    # Every file under a mounted volume, as paths relative to its root. Reparse points (junctions, links)
    # are listed as skipped and never followed: on an offline disk they point into the host's own C:.
    param(
        [Parameter(Mandatory = $true)] [string] $Root,
        [string[]] $ExcludeRel = @()
    )
    $always = @('System Volume Information', '$Recycle.Bin', 'pagefile.sys', 'hiberfil.sys', 'swapfile.sys')
    $exclude = @($always + $ExcludeRel | ForEach-Object { $_.TrimEnd('\').ToLowerInvariant() })
    $files = New-Object System.Collections.Generic.List[object]
    $skipped = New-Object System.Collections.Generic.List[string]
    $pending = New-Object System.Collections.Generic.Stack[string]
    $pending.Push('')
    while ($pending.Count -gt 0) {
        $rel = $pending.Pop()
        $dir = New-Object System.IO.DirectoryInfo -ArgumentList (Join-Path -Path $Root -ChildPath $rel)
        try { $entries = @($dir.GetFileSystemInfos()) }
        catch { $skipped.Add($rel); continue }
        foreach ($entry in $entries) {
            $childRel = if ($rel) { $rel + '\' + $entry.Name } else { $entry.Name }
            if ($exclude -contains $childRel.ToLowerInvariant()) { continue }
            if (($entry.Attributes -band [System.IO.FileAttributes]::ReparsePoint) -ne 0) {
                $skipped.Add($childRel)
                continue
            }
            if ($entry -is [System.IO.DirectoryInfo]) { $pending.Push($childRel) }
            else {
                $files.Add([pscustomobject]@{ Rel = $childRel; Size = $entry.Length; Full = $entry.FullName })
            }
        }
    }
    return [pscustomobject]@{ Files = $files.ToArray(); Skipped = $skipped.ToArray() }
}

$ImagingAction = 'inject_first_boot'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    if ([string]::IsNullOrEmpty($GuestUser) -or $null -eq $GuestPassword) {
        throw 'no guest credential was passed: set IMAGING_GUEST_USER and IMAGING_GUEST_PASSWORD'
    }
    $GuestSecret = ConvertTo-SecureString -String $GuestPassword -AsPlainText -Force
    $GuestCredential = New-Object System.Management.Automation.PSCredential -ArgumentList $GuestUser, $GuestSecret
    # Offline, on the host: writes the instrument's answer file and the volume configuration into a new OS
    # disk that no VM uses yet, and the first-boot hook that applies the volumes. The answer file goes to
    # C:\Windows\Panther\unattend.xml, where setup looks first when the generalized template boots: it names
    # the computer, sets time zone and locale, creates the local administrator (the guest credential, passed
    # to this script as parameters and filled in here, XML-escaped: never in the plan, journal or a log) and
    # joins the domain if one is configured. The hook deletes the answer file once setup is done. Windows runs C:\Windows\Setup\Scripts\SetupComplete.cmd once, at the
    # end of its first boot after sysprep; the hook runs the same script as configure_guest (mount each
    # labelled volume under C:\volumes and link it), so the switch's guest step only checks. A
    # SetupComplete.cmd the template already has is kept: the hook is added to it once. The provider holds
    # the host's mount lock while this runs.
    $Path = 'D:\Imaging\instruments\NDXZOOM\NDXZOOM-os-2026C3.1-3f2a9c1d.vhdx'
    $Volumes = @([ordered]@{'label' = 'Apps'; 'mount' = 'C:\volumes\Apps'; 'link' = 'C:\Instrument\Apps'}, [ordered]@{'label' = 'Settings'; 'mount' = 'C:\volumes\Settings'; 'link' = 'C:\Instrument\Settings'}, [ordered]@{'label' = 'Var'; 'mount' = 'C:\volumes\Var'; 'link' = 'C:\Instrument\Var'}, [ordered]@{'label' = 'Data'; 'mount' = 'C:\volumes\Data'; 'link' = 'C:\data'})
    $Answer = '<?xml version="1.0" encoding="utf-8"?>
<!-- The answer file of NDXZOOM''s new OS disk, written offline by imaging before its first boot.
     The template was generalized (sysprep /generalize /oobe): specialize names the machine and may join
     the domain, oobeSystem skips the questions and sets the local administrator, so PowerShell Direct
     answers with the guest credential once setup is done. The @@...@@ markers are filled on the host from
     the credential source at the moment the file is written, never in a plan, a journal or a log; the
     first boot''s SetupComplete.cmd deletes this file. Every value here is XML-escaped. -->
<unattend xmlns="urn:schemas-microsoft-com:unattend" xmlns:wcm="http://schemas.microsoft.com/WMIConfig/2002/State">
  <settings pass="specialize">
    <component name="Microsoft-Windows-Shell-Setup" processorArchitecture="amd64" publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS">
      <ComputerName>NDXZOOM</ComputerName>
      <TimeZone>GMT Standard Time</TimeZone>
    </component>
    <component name="Microsoft-Windows-UnattendedJoin" processorArchitecture="amd64" publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS">
      <Identification>
        <JoinDomain>controls.example.org</JoinDomain>
        <MachineObjectOU>OU=Instruments,DC=controls,DC=example,DC=org</MachineObjectOU>
        <Credentials>
          <Domain>controls.example.org</Domain>
          <Username>@@JOIN_USER@@</Username>
          <Password>@@JOIN_PASSWORD@@</Password>
        </Credentials>
      </Identification>
    </component>
  </settings>
  <settings pass="oobeSystem">
    <component name="Microsoft-Windows-International-Core" processorArchitecture="amd64" publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS">
      <InputLocale>en-GB</InputLocale>
      <SystemLocale>en-GB</SystemLocale>
      <UILanguage>en-US</UILanguage>
      <UserLocale>en-GB</UserLocale>
    </component>
    <component name="Microsoft-Windows-Shell-Setup" processorArchitecture="amd64" publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS">
      <OOBE>
        <HideEULAPage>true</HideEULAPage>
        <HideOnlineAccountScreens>true</HideOnlineAccountScreens>
        <HideWirelessSetupInOOBE>true</HideWirelessSetupInOOBE>
        <HideLocalAccountScreen>true</HideLocalAccountScreen>
        <ProtectYourPC>3</ProtectYourPC>
      </OOBE>
      <UserAccounts>
        <LocalAccounts>
          <LocalAccount wcm:action="add">
            <Name>@@GUEST_USER@@</Name>
            <Group>Administrators</Group>
            <Password>
              <Value>@@GUEST_PASSWORD@@</Value>
              <PlainText>true</PlainText>
            </Password>
          </LocalAccount>
        </LocalAccounts>
      </UserAccounts>
    </component>
  </settings>
</unattend>
'
    $fill = @{ '@@GUEST_USER@@' = $GuestUser; '@@GUEST_PASSWORD@@' = $GuestPassword; '@@JOIN_USER@@' = $JoinUser; '@@JOIN_PASSWORD@@' = $JoinPassword }
    foreach ($marker in @($fill.Keys)) {
        if ($Answer.Contains($marker)) {
            if ([string]::IsNullOrEmpty([string]$fill[$marker])) { throw "the answer file needs $marker but no value was passed: set IMAGING_DOMAIN_JOIN_USER and IMAGING_DOMAIN_JOIN_PASSWORD for a domain join" }
            $Answer = $Answer.Replace($marker, [System.Security.SecurityElement]::Escape([string]$fill[$marker]))
        }
    }
    [xml]$Answer | Out-Null  # a file setup could not read would stop the first boot: refuse it here
    $GuestScript = '        param([string] $RequestJson)
        Set-StrictMode -Version 3
        $ErrorActionPreference = ''Stop''
        $request = ConvertFrom-Json -InputObject $RequestJson
        $changed = $false
        foreach ($disk in @(Get-Disk | Where-Object { $_.IsOffline })) {
            Set-Disk -Number $disk.Number -IsOffline $false
            $changed = $true
        }
        foreach ($disk in @(Get-Disk | Where-Object { $_.IsReadOnly })) {
            Set-Disk -Number $disk.Number -IsReadOnly $false
            $changed = $true
        }
        $report = New-Object System.Collections.Generic.List[object]
        foreach ($spec in @($request.volumes)) {
            $label = [string]$spec.label
            $mount = ([string]$spec.mount).TrimEnd(''\'')
            $link = ([string]$spec.link).TrimEnd(''\'')
            $did = New-Object System.Collections.Generic.List[string]
            $found = @(Get-Volume | Where-Object { $_.FileSystemLabel -eq $label })
            if ($found.Count -ne 1) { throw "expected one volume labelled ''$label'' in the guest, found $($found.Count)" }
            $partition = Get-Partition -Volume $found[0]
            if (-not (Test-Path -LiteralPath $mount -PathType Container)) {
                New-Item -ItemType Directory -Path $mount -Force | Out-Null
                $did.Add(''created mount folder'')
            }
            $paths = @($partition.AccessPaths | ForEach-Object { ([string]$_).TrimEnd(''\'') })
            if ($paths -notcontains $mount) {
                if (@(Get-ChildItem -LiteralPath $mount -Force).Count -gt 0) { throw "cannot mount ''$label'' at $mount: the folder is not empty" }
                Add-PartitionAccessPath -DiskNumber $partition.DiskNumber -PartitionNumber $partition.PartitionNumber -AccessPath ($mount + ''\'')
                $did.Add(''mounted'')
            }
            $letter = [string]$partition.DriveLetter
            if ($letter -match ''^[A-Za-z]$'') {
                Remove-PartitionAccessPath -DiskNumber $partition.DiskNumber -PartitionNumber $partition.PartitionNumber -AccessPath ($letter + '':\'')
                $did.Add("removed drive letter $letter")
            }
            # A link leads to the mount folder, or to a folder inside the volume (''sub'': a shared folder''s place)
            $to = $mount
            if ($spec.PSObject.Properties.Name -contains ''sub'' -and [string]$spec.sub) {
                $to = Join-Path -Path $mount -ChildPath ([string]$spec.sub)
                if (-not (Test-Path -LiteralPath $to -PathType Container)) {
                    New-Item -ItemType Directory -Path $to -Force | Out-Null
                    $did.Add(''created the folder the link leads to'')
                }
            }
            $item = Get-Item -LiteralPath $link -Force -ErrorAction SilentlyContinue
            $makeLink = $true
            if ($null -ne $item) {
                if (-not $item.PSIsContainer) { throw "cannot link $link to ${to}: a file is in the way" }
                if (($item.Attributes -band [System.IO.FileAttributes]::ReparsePoint) -ne 0) {
                    $target = ([string]@($item.Target)[0]).TrimEnd(''\'')
                    if ($target -eq $to) { $makeLink = $false }
                    else {
                        [System.IO.Directory]::Delete($link, $false)
                        $did.Add("removed the link to $target")
                    }
                }
                elseif (@(Get-ChildItem -LiteralPath $link -Force).Count -eq 0) {
                    [System.IO.Directory]::Delete($link, $false)
                    $did.Add(''removed empty placeholder folder'')
                }
                else { throw "cannot link $link to ${to}: it is a folder with files in it; move them away first" }
            }
            if ($makeLink) {
                $parent = Split-Path -Path $link -Parent
                if (-not (Test-Path -LiteralPath $parent -PathType Container)) { New-Item -ItemType Directory -Path $parent -Force | Out-Null }
                New-Item -ItemType Junction -Path $link -Target $to | Out-Null
                $did.Add(''linked'')
            }
            if ($did.Count -gt 0) { $changed = $true }
            $report.Add([ordered]@{ label = $label; mount = $mount; link = $link; done = @($did.ToArray()) })
        }
        ConvertTo-Json -InputObject ([ordered]@{ changed = $changed; volumes = @($report.ToArray()) }) -Depth 5 -Compress
'
    $users = @(Get-VM | Get-VMHardDiskDrive | Where-Object { $_.Path -eq $Path })
    if ($users.Count -gt 0) { throw "refusing to write into $Path offline: it is attached to VM $($users[0].VMName)" }
    $request = ConvertTo-Json -InputObject ([ordered]@{ volumes = @($Volumes) }) -Depth 4 -Compress
    $utf8 = New-Object System.Text.UTF8Encoding -ArgumentList $false
    $mounted = Mount-ImagingVolume -Path $Path
    try {
        $root = $mounted.Folder
        if (-not (Test-Path -LiteralPath (Join-Path -Path $root -ChildPath 'Windows') -PathType Container)) {
            throw "the largest partition of $Path holds no Windows folder: not an OS disk"
        }
        $folder = Join-Path -Path $root -ChildPath 'ProgramData\imaging'
        $scripts = Join-Path -Path $root -ChildPath 'Windows\Setup\Scripts'
        foreach ($f in @($folder, $scripts)) {
            if (-not (Test-Path -LiteralPath $f -PathType Container)) { New-Item -ItemType Directory -Path $f -Force | Out-Null }
        }
        $panther = Join-Path -Path $root -ChildPath 'Windows\Panther'
        if (-not (Test-Path -LiteralPath $panther -PathType Container)) { New-Item -ItemType Directory -Path $panther -Force | Out-Null }
        $answerFile = Join-Path -Path $panther -ChildPath 'unattend.xml'
        $oldAnswer = if (Test-Path -LiteralPath $answerFile -PathType Leaf) { [System.IO.File]::ReadAllText($answerFile) } else { $null }
        $json = Join-Path -Path $folder -ChildPath 'first-boot.json'
        $old = if (Test-Path -LiteralPath $json -PathType Leaf) { [System.IO.File]::ReadAllText($json) } else { $null }
        $hook = '$apply = {' + "`r`n" + $GuestScript + "`r`n" + '}' + "`r`n" +
            '$answer = & $apply ([System.IO.File]::ReadAllText(''C:\ProgramData\imaging\first-boot.json''))' + "`r`n" +
            'Set-Content -LiteralPath ''C:\ProgramData\imaging\first-boot.done'' -Value $answer' + "`r`n"
        $line = '@powershell.exe -NoProfile -ExecutionPolicy Bypass -File "%ProgramData%\imaging\first-boot.ps1" > "%ProgramData%\imaging\first-boot.log" 2>&1'
        $cmd = Join-Path -Path $scripts -ChildPath 'SetupComplete.cmd'
        $cmdText = if (Test-Path -LiteralPath $cmd -PathType Leaf) { [System.IO.File]::ReadAllText($cmd) } else { '' }
        $changed = $false
        if ($oldAnswer -cne $Answer) {
            [System.IO.File]::WriteAllText($answerFile, $Answer, $utf8)
            $changed = $true
        }
        $scrub = '@del /q "%WINDIR%\Panther\unattend.xml"'
        if ($old -cne $request) {
            [System.IO.File]::WriteAllText($json, $request, $utf8)
            [System.IO.File]::WriteAllText((Join-Path -Path $folder -ChildPath 'first-boot.ps1'), $hook, $utf8)
            $changed = $true
        }
        foreach ($add in @($line, $scrub)) {
            if (-not $cmdText.Contains($add)) {
                $cmdText = $cmdText.TrimEnd() + "`r`n" + $add + "`r`n"
                [System.IO.File]::WriteAllText($cmd, $cmdText, $utf8)
                $changed = $true
            }
        }
        $Result['changed'] = $changed
    }
    finally {
        Dismount-ImagingVolume -Mounted $mounted
    }
    $Result['path'] = $Path
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
